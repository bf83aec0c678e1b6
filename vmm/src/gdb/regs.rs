//! KVM's register state ⇄ gdb's x86-64 register file (`gdbstub_arch`'s
//! core + SSE set, gdb's `64bit-core.xml` and `64bit-sse.xml`).
//!
//! gdb sees the general registers, rip, eflags, the six segment
//! selectors, the x87 stack and its control words, xmm0–15 and mxcsr.
//! Writes go back field by field; a segment selector gdb changed sets only
//! the selector (KVM's hidden descriptor part stays), since gdb has no way
//! to say what the descriptor should be.

use gdbstub_arch::x86::reg::{X86SegmentRegs, X86_64CoreRegs, X87FpuInternalRegs};
use kvm_bindings::{kvm_fpu, kvm_regs, kvm_segment, kvm_sregs};

/// An x87 tag of "empty" in the full (two bits per register) tag word.
const TAG_EMPTY: u32 = 0b11;
/// Bytes of an x87 register (80 bits) in `kvm_fpu.fpr`'s 16-byte slots.
const F80_BYTES: usize = 10;

/// A register value gdb wrote that the vCPU cannot hold.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegsError {
    /// Segment selectors are 16 bits wide.
    #[error("segment selector {0:#x} does not fit in 16 bits")]
    Selector(u32),
}

/// gdb's view of one vCPU's registers.
pub fn to_gdb(regs: &kvm_regs, sregs: &kvm_sregs, fpu: &kvm_fpu) -> X86_64CoreRegs {
    let r = regs;
    let mut st = [[0u8; F80_BYTES]; 8];
    for (dst, src) in st.iter_mut().zip(fpu.fpr.iter()) {
        dst.copy_from_slice(&src[..F80_BYTES]);
    }
    let mut xmm = [0u128; 16];
    for (dst, src) in xmm.iter_mut().zip(fpu.xmm.iter()) {
        *dst = u128::from_le_bytes(*src);
    }
    X86_64CoreRegs {
        regs: [
            r.rax, r.rbx, r.rcx, r.rdx, r.rsi, r.rdi, r.rbp, r.rsp, r.r8, r.r9, r.r10, r.r11,
            r.r12, r.r13, r.r14, r.r15,
        ],
        // The upper half of RFLAGS is reserved (zero).
        eflags: r.rflags as u32,
        rip: r.rip,
        segments: X86SegmentRegs {
            cs: sregs.cs.selector.into(),
            ss: sregs.ss.selector.into(),
            ds: sregs.ds.selector.into(),
            es: sregs.es.selector.into(),
            fs: sregs.fs.selector.into(),
            gs: sregs.gs.selector.into(),
        },
        st,
        fpu: X87FpuInternalRegs {
            fctrl: fpu.fcw.into(),
            fstat: fpu.fsw.into(),
            ftag: full_tag_word(fpu.ftwx),
            // 64-bit FXSAVE keeps whole instruction and operand pointers;
            // gdb's 32-bit offset/segment pair carries their two halves.
            fiseg: (fpu.last_ip >> 32) as u32,
            fioff: fpu.last_ip as u32,
            foseg: (fpu.last_dp >> 32) as u32,
            fooff: fpu.last_dp as u32,
            fop: fpu.last_opcode.into(),
        },
        xmm,
        mxcsr: fpu.mxcsr,
    }
}

/// Applies gdb's registers to the vCPU's state; returns whether `sregs`
/// changed (so the caller only writes them back when needed).
pub fn apply_gdb(
    g: &X86_64CoreRegs,
    regs: &mut kvm_regs,
    sregs: &mut kvm_sregs,
    fpu: &mut kvm_fpu,
) -> Result<bool, RegsError> {
    let [rax, rbx, rcx, rdx, rsi, rdi, rbp, rsp, r8, r9, r10, r11, r12, r13, r14, r15] = g.regs;
    let s = &g.segments;
    let mut sregs_changed = false;
    let selectors: [(&mut kvm_segment, u32); 6] = [
        (&mut sregs.cs, s.cs),
        (&mut sregs.ss, s.ss),
        (&mut sregs.ds, s.ds),
        (&mut sregs.es, s.es),
        (&mut sregs.fs, s.fs),
        (&mut sregs.gs, s.gs),
    ];
    // Checked before anything changes: a refused write changes nothing.
    for (_, sel) in &selectors {
        u16::try_from(*sel).map_err(|_| RegsError::Selector(*sel))?;
    }
    for (seg, sel) in selectors {
        let sel = sel as u16;
        if seg.selector != sel {
            seg.selector = sel;
            sregs_changed = true;
        }
    }
    *regs = kvm_regs {
        rax,
        rbx,
        rcx,
        rdx,
        rsi,
        rdi,
        rsp,
        rbp,
        r8,
        r9,
        r10,
        r11,
        r12,
        r13,
        r14,
        r15,
        rip: g.rip,
        rflags: g.eflags.into(),
    };
    for (dst, src) in fpu.fpr.iter_mut().zip(g.st.iter()) {
        dst[..F80_BYTES].copy_from_slice(src);
    }
    let f = &g.fpu;
    fpu.fcw = f.fctrl as u16;
    fpu.fsw = f.fstat as u16;
    fpu.ftwx = abridged_tag_word(f.ftag);
    fpu.last_ip = (u64::from(f.fiseg) << 32) | u64::from(f.fioff);
    fpu.last_dp = (u64::from(f.foseg) << 32) | u64::from(f.fooff);
    fpu.last_opcode = f.fop as u16;
    for (dst, src) in fpu.xmm.iter_mut().zip(g.xmm.iter()) {
        *dst = src.to_le_bytes();
    }
    fpu.mxcsr = g.mxcsr;
    Ok(sregs_changed)
}

/// FXSAVE's abridged tag (one bit per register, 1 = in use) as the full
/// x87 tag word gdb shows (two bits each, 11 = empty). A register in use
/// is shown as "valid": the finer zero/special tags need its contents
/// classified, which gdb does not rely on.
fn full_tag_word(abridged: u8) -> u32 {
    (0..8)
        .filter(|i| abridged & (1 << i) == 0)
        .fold(0, |w, i| w | (TAG_EMPTY << (2 * i)))
}

/// The full tag word back as FXSAVE's abridged one.
fn abridged_tag_word(full: u32) -> u8 {
    (0..8)
        .filter(|i| (full >> (2 * i)) & TAG_EMPTY != TAG_EMPTY)
        .fold(0, |w, i| w | (1 << i))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> (kvm_regs, kvm_sregs, kvm_fpu) {
        let regs = kvm_regs {
            rax: 1,
            rbx: 2,
            rcx: 3,
            rdx: 4,
            rsi: 5,
            rdi: 6,
            rsp: 7,
            rbp: 8,
            r8: 9,
            r15: 16,
            rip: 0xffff_ffff_8100_0000,
            rflags: 0x246,
            ..Default::default()
        };
        let mut sregs = kvm_sregs::default();
        sregs.cs.selector = 0x10;
        sregs.cs.base = 0x1234;
        sregs.ss.selector = 0x18;
        sregs.gs.selector = 0x2b;
        let mut fpu = kvm_fpu {
            fcw: 0x37f,
            fsw: 0x3800,
            ftwx: 0b1000_0001,
            last_ip: 0x1_0000_0002,
            last_dp: 0x3_0000_0004,
            last_opcode: 0x5d9,
            mxcsr: 0x1f80,
            ..Default::default()
        };
        fpu.fpr[7] = [0xaa; 16];
        fpu.xmm[15] = [0x55; 16];
        (regs, sregs, fpu)
    }

    #[test]
    fn kvm_state_maps_to_gdb_registers() {
        let (r, s, f) = sample();
        let g = to_gdb(&r, &s, &f);
        // gdb's order: rax, rbx, rcx, rdx, rsi, rdi, rbp, rsp, r8..r15.
        assert_eq!(&g.regs[..8], &[1, 2, 3, 4, 5, 6, 8, 7]);
        assert_eq!((g.regs[8], g.regs[15]), (9, 16));
        assert_eq!((g.rip, g.eflags), (0xffff_ffff_8100_0000, 0x246));
        assert_eq!(
            (g.segments.cs, g.segments.ss, g.segments.gs),
            (0x10, 0x18, 0x2b)
        );
        assert_eq!(g.st[7], [0xaa; 10]);
        assert_eq!(g.xmm[15], u128::from_le_bytes([0x55; 16]));
        assert_eq!((g.fpu.fctrl, g.fpu.fstat, g.mxcsr), (0x37f, 0x3800, 0x1f80));
        // Registers 0 and 7 in use, 1..=6 empty.
        assert_eq!(g.fpu.ftag, 0x3ffc);
        assert_eq!((g.fpu.fiseg, g.fpu.fioff), (1, 2));
        assert_eq!((g.fpu.foseg, g.fpu.fooff, g.fpu.fop), (3, 4, 0x5d9));
    }

    #[test]
    fn gdb_registers_round_trip_to_kvm_state() {
        let (r, s, f) = sample();
        let g = to_gdb(&r, &s, &f);
        let (mut r2, mut s2, mut f2) = (kvm_regs::default(), s, kvm_fpu::default());
        assert_eq!(apply_gdb(&g, &mut r2, &mut s2, &mut f2), Ok(false));
        assert_eq!(r2, r);
        assert_eq!(to_gdb(&r2, &s2, &f2), g);
        assert_eq!(
            (f2.ftwx, f2.last_ip, f2.last_dp),
            (f.ftwx, f.last_ip, f.last_dp)
        );
    }

    #[test]
    fn a_changed_selector_keeps_the_descriptor() {
        let (r, s, f) = sample();
        let mut g = to_gdb(&r, &s, &f);
        g.segments.cs = 0x33;
        let (mut r2, mut s2, mut f2) = (r, s, f);
        assert_eq!(apply_gdb(&g, &mut r2, &mut s2, &mut f2), Ok(true));
        assert_eq!((s2.cs.selector, s2.cs.base), (0x33, 0x1234));
    }

    #[test]
    fn an_oversized_selector_is_refused_and_changes_nothing() {
        let (r, s, f) = sample();
        let mut g = to_gdb(&r, &s, &f);
        g.rip = 0;
        g.segments.ds = 0x1_0000;
        let (mut r2, mut s2, mut f2) = (r, s, f);
        assert_eq!(
            apply_gdb(&g, &mut r2, &mut s2, &mut f2),
            Err(RegsError::Selector(0x1_0000))
        );
        assert_eq!(r2.rip, r.rip);
    }

    #[test]
    fn tag_words_convert_both_ways() {
        assert_eq!(full_tag_word(0), 0xffff);
        assert_eq!(full_tag_word(0xff), 0);
        for abridged in [0u8, 1, 0x80, 0x5a, 0xff] {
            assert_eq!(abridged_tag_word(full_tag_word(abridged)), abridged);
        }
        // Zero and special tags (01, 10) are "in use" too.
        assert_eq!(abridged_tag_word(0xfff9), 0b11);
    }
}
