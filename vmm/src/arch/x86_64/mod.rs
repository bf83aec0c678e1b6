//! x86_64 guest setup: CPUID, MSRs, registers, GDT, page tables, LAPIC,
//! MP table and ACPI tables.

pub mod acpi;
pub mod cpuid;
pub mod mptable;
pub mod msr;
pub mod regs;

/// Errors configuring x86_64 vCPU or platform state.
#[derive(Debug, thiserror::Error)]
pub enum ArchError {
    /// A KVM ioctl failed.
    #[error("{0} failed: {1}")]
    Kvm(&'static str, kvm_ioctls::Error),
    /// Writing boot structures to guest memory failed.
    #[error("cannot write {0} to guest memory")]
    GuestMemory(&'static str),
    /// Too many vCPUs for the platform tables.
    #[error("too many vCPUs: {0} (max {1})")]
    TooManyVcpus(u8, u8),
}
