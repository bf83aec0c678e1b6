//! Upstream arena selftests (`test_progs`) built from the kernel's source.
//! (Being implemented.)

use crate::initramfs::ImageFile;
use crate::kernel::Kernel;
use crate::{ImageError, Result};

/// Files to add to the image so `/selftests/test_progs` runs in the guest.
pub fn image_files(kernel: &Kernel) -> Result<Vec<ImageFile>> {
    Err(ImageError::NoKernelPackage(format!(
        "selftests for {} are not available yet",
        kernel.release
    )))
}
