//! The verifier's stack limit, checked on a built object without loading
//! it: a program and every function it calls, down the deepest chain of
//! BPF-to-BPF calls, share 512 bytes. Kernels round each frame differently
//! (see [`Rounding`]), so a program that loads on this machine's kernel can
//! be refused by an older one ("combined stack size of 3 calls is 544. Too
//! large" on Debian 12's 6.1) — this reads the frames off the instructions
//! the way the verifier does, so a test can hold every program to the
//! strictest rule without booting that kernel.

use std::collections::{BTreeSet, HashSet};

use anyhow::{Context as _, Result, bail};

/// The verifier's limit for a whole call chain.
pub const MAX_STACK: u32 = 512;

/// How a kernel rounds each frame before adding up a call chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rounding {
    /// Up to 32 bytes, and at least 32 even for a function that uses no
    /// stack (the interpreter's granularity). Debian 12's 6.1 and Ubuntu
    /// 22.04's 5.15 count this way.
    Interpreter,
    /// Up to 16 bytes, nothing for a function without stack: newer kernels
    /// when the program is JIT-compiled (this machine's 6.18).
    Jit,
}

impl Rounding {
    fn frame(self, depth: u32) -> u32 {
        match self {
            Self::Interpreter => depth.max(1).next_multiple_of(32),
            Self::Jit => depth.next_multiple_of(16),
        }
    }
}

/// One program after its calls are linked, as the verifier splits it: the
/// functions (subprograms) by first instruction, each one's own stack depth
/// and whom it calls.
#[derive(Debug, Clone)]
pub struct ProgramStack {
    pub name: String,
    /// (first instruction, bytes of stack below the frame pointer it uses).
    pub functions: Vec<(usize, u32)>,
    /// Calls as (caller, callee) indices into `functions`.
    pub calls: BTreeSet<(usize, usize)>,
}

impl ProgramStack {
    /// The deepest call chain's combined stack under `rounding`, and its
    /// frames (each one's own depth, unrounded) from the program down.
    pub fn deepest(&self, rounding: Rounding) -> (u32, Vec<u32>) {
        self.deepest_from(0, rounding, &mut Vec::new())
    }

    fn deepest_from(&self, f: usize, rounding: Rounding, path: &mut Vec<usize>) -> (u32, Vec<u32>) {
        let own = self.functions.get(f).map_or(0, |&(_, d)| d);
        // The verifier refuses recursion; a cycle here would be a bug in
        // the object, not a deeper chain.
        if path.contains(&f) {
            return (0, Vec::new());
        }
        path.push(f);
        let mut best = (0, Vec::new());
        for &(_, callee) in self.calls.range((f, 0)..(f + 1, 0)) {
            let sub = self.deepest_from(callee, rounding, path);
            if best.1.is_empty() || sub.0 > best.0 {
                best = sub;
            }
        }
        path.pop();
        let mut frames = vec![own];
        frames.extend(best.1);
        (rounding.frame(own) + best.0, frames)
    }
}

const BPF_PSEUDO_CALL: u8 = 1;
const FP: u8 = 10;

/// Every program of `object` with its functions' stack depths and calls.
pub fn programs(object: &[u8]) -> Result<Vec<ProgramStack>> {
    let mut obj = aya_obj::Object::parse(object).context("parsing the eBPF object")?;
    let text: HashSet<usize> = obj.functions.keys().map(|(section, _)| *section).collect();
    obj.relocate_calls(&text)
        .context("linking the object's function calls")?;
    let mut out = Vec::new();
    for (name, program) in &obj.programs {
        let f = obj
            .functions
            .get(&program.function_key())
            .with_context(|| format!("program {name}: no function"))?;
        out.push(split(name, &f.instructions)?);
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// Splits linked instructions into functions at call targets (as the
/// verifier's `check_subprogs` does) and measures each one's stack.
fn split(name: &str, insns: &[aya_obj::generated::bpf_insn]) -> Result<ProgramStack> {
    let is_call =
        |i: &aya_obj::generated::bpf_insn| i.code == 0x85 && i.src_reg() == BPF_PSEUDO_CALL;
    let target = |pc: usize, imm: i32| -> Result<usize> {
        let t = i64::try_from(pc)? + 1 + i64::from(imm);
        usize::try_from(t)
            .ok()
            .filter(|&t| t < insns.len())
            .with_context(|| format!("program {name}: call at {pc} out of the program"))
    };
    let mut starts = BTreeSet::from([0usize]);
    for (pc, i) in insns.iter().enumerate() {
        if is_call(i) {
            starts.insert(target(pc, i.imm)?);
        }
    }
    let starts: Vec<usize> = starts.into_iter().collect();
    let index_of = |pc: usize| starts.partition_point(|&s| s <= pc) - 1;
    let mut functions = Vec::new();
    let mut calls = BTreeSet::new();
    for (n, &start) in starts.iter().enumerate() {
        let end = starts.get(n + 1).copied().unwrap_or(insns.len());
        let mut depth = 0u32;
        // Registers holding the frame pointer plus a constant: the verifier
        // charges the stack a pointer reaches, also when a helper or a
        // callee is the one that writes through it.
        let mut fp_off: [Option<i64>; 11] = [None; 11];
        let mut pc = start;
        while pc < end {
            let Some(i) = insns.get(pc) else { break };
            let (dst, src) = (usize::from(i.dst_reg()), i.src_reg());
            let class = i.code & 0x07;
            let mut reach = |off: i64| {
                if off < 0 {
                    depth = depth.max(u32::try_from(-off).unwrap_or(u32::MAX));
                }
            };
            match class {
                // LDX: dst = *(src + off)
                0x01 if src == FP => reach(i64::from(i.off)),
                // ST / STX: *(dst + off) = ...
                0x02 | 0x03 if usize::from(FP) == dst => reach(i64::from(i.off)),
                0x01..=0x03 => {
                    let base = if class == 0x01 { usize::from(src) } else { dst };
                    if let Some(b) = fp_off.get(base).copied().flatten() {
                        reach(b + i64::from(i.off));
                    }
                }
                _ => {}
            }
            if is_call(i) {
                calls.insert((n, index_of(target(pc, i.imm)?)));
            }
            // Track `rX = r10` and `rX += imm`; any other write to rX, or a
            // call (r0-r5 clobbered), forgets it.
            let copied = fp_off.get(usize::from(src)).copied().flatten();
            if let Some(slot) = fp_off.get_mut(dst) {
                match i.code {
                    0xbf if src == FP => *slot = Some(0),
                    0xbf => *slot = copied,
                    0x07 => {
                        if let Some(o) = slot.as_mut() {
                            *o += i64::from(i.imm);
                            reach(*o);
                        }
                    }
                    _ if class == 0x07 || class == 0x04 || class == 0x01 => *slot = None,
                    _ => {}
                }
            }
            if i.code == 0x85 {
                for r in fp_off.iter_mut().take(6) {
                    *r = None;
                }
            }
            // A 64-bit immediate load takes two instruction slots.
            pc += if i.code == 0x18 { 2 } else { 1 };
        }
        functions.push((start, depth));
    }
    if functions.is_empty() {
        bail!("program {name}: no instructions");
    }
    Ok(ProgramStack {
        name: name.to_owned(),
        functions,
        calls,
    })
}

#[cfg(test)]
mod tests {
    use aya_obj::generated::bpf_insn;

    use super::*;

    fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> bpf_insn {
        bpf_insn {
            code,
            _bitfield_align_1: [],
            _bitfield_1: bpf_insn::new_bitfield_1(dst, src),
            off,
            imm,
        }
    }
    const EXIT: u8 = 0x95;
    const STX_DW: u8 = 0x7b;
    const LDX_DW: u8 = 0x79;
    const CALL: u8 = 0x85;
    const MOV64_X: u8 = 0xbf;
    const ADD64_K: u8 = 0x07;

    /// The shape that 6.1 refused: a 352-byte program calls a 136-byte
    /// function that calls one without stack.
    fn chain() -> Vec<bpf_insn> {
        vec![
            // 0: main
            insn(STX_DW, FP, 1, -352, 0),
            insn(CALL, 0, BPF_PSEUDO_CALL, 0, 1), // -> 3
            insn(EXIT, 0, 0, 0, 0),
            // 3: a function whose deepest slot is reached through r1 = r10 - 136
            insn(MOV64_X, 1, FP, 0, 0),
            insn(ADD64_K, 1, 0, 0, -136),
            insn(LDX_DW, 2, FP, -8, 0),
            insn(CALL, 0, BPF_PSEUDO_CALL, 0, 1), // -> 8
            insn(EXIT, 0, 0, 0, 0),
            // 8: a leaf without stack
            insn(EXIT, 0, 0, 0, 0),
        ]
    }

    #[test]
    fn frames_and_calls_are_read_as_the_verifier_splits_them() {
        let p = split("t", &chain()).unwrap();
        assert_eq!(p.functions, vec![(0, 352), (3, 136), (8, 0)]);
        assert_eq!(p.calls, BTreeSet::from([(0, 1), (1, 2)]));
    }

    #[test]
    fn the_two_roundings_give_the_two_kernels_verdicts() {
        let p = split("t", &chain()).unwrap();
        // 6.1: 352 + 160 + 32, refused; 6.18 with the JIT: 352 + 144 + 0.
        assert_eq!(p.deepest(Rounding::Interpreter), (544, vec![352, 136, 0]));
        assert_eq!(p.deepest(Rounding::Jit), (496, vec![352, 136, 0]));
    }

    #[test]
    fn a_call_out_of_the_program_is_an_error() {
        let insns = vec![insn(CALL, 0, BPF_PSEUDO_CALL, 0, 5), insn(EXIT, 0, 0, 0, 0)];
        assert!(split("t", &insns).is_err());
    }
}
