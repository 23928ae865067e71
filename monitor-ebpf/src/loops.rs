//! `bpf_loop` with an iteration count the kernel reads as it was meant.
//!
//! aya-ebpf declares `bpf_loop(nr_loops: u32, ..)`. The BPF calling
//! convention leaves the upper 32 bits of a 32-bit argument undefined, and
//! LLVM uses that: `1024 - used` was computed as `0xffff_fffe + 0x400` in a
//! 64-bit register, i.e. `0x1_0000_03fe`. The helper itself only reads the
//! low 32 bits, but the verifier inlines `bpf_loop` (flags 0, known
//! callback) and the inlined code compares the whole register against
//! `BPF_MAX_LOOPS`: the call failed with `-E2BIG` without running the
//! callback, and every segment that began with a whole application-data
//! record followed by more bytes marked its direction unsynced
//! (`overflows`). Declaring the count as `u64` makes LLVM pass a
//! zero-extended value.

use aya_ebpf::cty::{c_long, c_void};

/// `BPF_FUNC_loop`.
const BPF_FUNC_LOOP: usize = 181;

/// Runs `callback(i, ctx)` for `i` in `0..nr_loops` until it returns 1
/// (flags 0). Returns the iterations run, or a negative error.
#[inline(always)]
pub fn run(nr_loops: u32, callback: *mut c_void, ctx: *mut c_void) -> c_long {
    // SAFETY: the helper's real signature, with the count widened (see above);
    // calling a BPF helper by its id is how every helper binding works.
    let helper: unsafe extern "C" fn(u64, *mut c_void, *mut c_void, u64) -> c_long =
        unsafe { core::mem::transmute(BPF_FUNC_LOOP) };
    unsafe { helper(u64::from(nr_loops), callback, ctx, 0) }
}
