//! Weight repacking, done once at load time.
//!
//! A quantized matrix `W` (n output rows x k inputs) is stored as groups of 16
//! output rows. For each group and each 32-wide block of k there is one
//! *record*; records of a group are contiguous so a thread streams them in
//! order. Inside a record the weights are laid out in eight 64-byte *chunks*:
//! chunk j holds weights 4j..4j+3 of each of the 16 rows, one 32-bit lane per
//! row, so that `vpdpbusd` with a broadcast activation word produces 16 finished
//! partial dot products at once (no horizontal sums). Values are unsigned:
//! `w = s * (u - c)` (symmetric kinds) or `w = s * u - m` (affine kind).
//!
//! | kind | from          | record bytes | layout                                            |
//! |------|---------------|--------------|---------------------------------------------------|
//! | Q8S  | Q8_0          | 544          | 8 chunks of u8 (q+128); 16 f16 scales             |
//! | Q5S  | Q5_0          | 352          | 4 nibble chunks; 64 B high bits; 16 f16 scales    |
//! | Q4A  | Q4_0 Q4_1     | 384          | 4 nibble chunks; 16 f32 scales; 16 f32 mins       |
//! | Q4K  | Q4_K          | 288 (+16)    | 4 nibble chunks; 16 u8 scales; 16 u8 mins         |
//! | Q6K  | Q6_K          | 416 (+8)     | 4 nibble chunks; 2 x 64 B high bits; 2 x 16 i8 scales |
//! | F32  | F32 F16 BF16, and types without a packed kind | n x k f32 row-major |
//!
//! Q4K keeps Q4_K's 6-bit sub-block scales and mins as integers; the per-row
//! super-block factors (d, dmin, 16 rows x 2 f32 per 8 records) sit in a side
//! array, so the kernel forms `s = d * sc` and `m = dmin * mq` exactly as the
//! other kinds' packing would (the same f32 product), at 4.75 bits per weight
//! instead of Q4A's 6.
//!
//! Q6K likewise keeps Q6_K's signed 8-bit scales (one per 16 weights) in the
//! record and the per-row super-block d (16 rows x 1 f32 per 8 records) in the
//! side array: 6.5 bits per weight, as in the file, instead of the 10 of
//! 8-bit values with f32 scales. The kernel forms `s = d * sc`, the product
//! ggml's dequantization uses.
//!
//! Nibble chunk p (p = 0..3) holds weight 4p+t in the low nibble and weight
//! 16+4p+t in the high nibble of byte t of each lane. The Q5S high-bit lane of
//! a row holds, in byte t bit j, the fifth bit of weight 4j+t. Q6K's two
//! high-bit vectors (bytes 256..320 for chunks 0..3, 320..384 for 4..7) hold,
//! in byte t bits 2(j%4)..2(j%4)+1 of a lane, the top two bits of weight 4j+t.

use half::f16;
use specdec_gguf::GgmlType;

use crate::quant::{dequantize_row, f16_at, q6k_ints, scale_min_k4};
use crate::KernelError;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PackedKind {
    Q8S,
    Q5S,
    Q4A,
    Q4K,
    Q6K,
    F32,
}

impl PackedKind {
    pub const fn record_bytes(self) -> usize {
        match self {
            PackedKind::Q8S => 544,
            PackedKind::Q5S => 352,
            PackedKind::Q4A => 384,
            PackedKind::Q4K => 288,
            PackedKind::Q6K => 416,
            PackedKind::F32 => 0,
        }
    }
    /// The constant c of `w = s * (u - c)`; 0 for the affine kind.
    pub const fn offset(self) -> i32 {
        match self {
            PackedKind::Q8S => 128,
            PackedKind::Q5S => 16,
            PackedKind::Q6K => 32,
            _ => 0,
        }
    }
    /// Which packed kind a GGUF type is stored as.
    pub fn for_type(ty: GgmlType) -> PackedKind {
        match ty {
            GgmlType::Q8_0 => PackedKind::Q8S,
            GgmlType::Q5_0 => PackedKind::Q5S,
            GgmlType::Q4_K => PackedKind::Q4K,
            GgmlType::Q4_0 | GgmlType::Q4_1 => PackedKind::Q4A,
            GgmlType::Q6_K => PackedKind::Q6K,
            _ => PackedKind::F32,
        }
    }
}

/// 64-byte aligned byte buffer (records start on cache lines).
pub struct AlignedBytes {
    raw: Vec<u128>,
    len: usize,
    pad: usize,
}

impl Default for AlignedBytes {
    /// Empty, without allocating.
    fn default() -> Self {
        AlignedBytes { raw: Vec::new(), len: 0, pad: 0 }
    }
}

impl AlignedBytes {
    pub fn zeroed(len: usize) -> Self {
        let raw = vec![0u128; len.div_ceil(16) + 4];
        let pad = (64 - (raw.as_ptr() as usize % 64)) % 64;
        AlignedBytes { raw, len, pad }
    }
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: raw holds len + 64 bytes; pad < 64.
        unsafe { std::slice::from_raw_parts((self.raw.as_ptr() as *const u8).add(self.pad), self.len) }
    }
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as above, unique borrow.
        unsafe { std::slice::from_raw_parts_mut((self.raw.as_mut_ptr() as *mut u8).add(self.pad), self.len) }
    }
}

/// A weight matrix in the layout the kernels read.
pub struct PackedMatrix {
    pub kind: PackedKind,
    /// Output rows.
    pub n: usize,
    /// Inputs per row.
    pub k: usize,
    /// The GGUF type it came from (for reports).
    pub source: GgmlType,
    pub(crate) q: AlignedBytes,
    pub(crate) f: Vec<f32>,
    /// Q4K: per group and super-block (8 records), 16 d then 16 dmin; Q6K:
    /// 16 d. Empty for the other kinds.
    pub(crate) sb: Vec<f32>,
}

impl PackedMatrix {
    /// How activations are quantized for this matrix (ggml's pairing).
    pub fn act_style(&self) -> crate::act::ActStyle {
        match self.source {
            GgmlType::Q4_K | GgmlType::Q6_K => crate::act::ActStyle::Q8_K,
            _ => crate::act::ActStyle::Q8_0,
        }
    }
    pub fn n_groups(&self) -> usize {
        self.n.div_ceil(16)
    }
    pub fn blocks(&self) -> usize {
        self.k / 32
    }
    /// Floats per group and super-block in `sb`.
    pub(crate) fn sb_stride(&self) -> usize {
        sb_stride(self.kind)
    }
    /// Bytes one full pass over the matrix reads.
    pub fn bytes(&self) -> usize {
        match self.kind {
            PackedKind::F32 => self.f.len() * 4,
            _ => self.q.len + self.sb.len() * 4,
        }
    }
    /// Packs `n` rows of `k` elements of type `ty` (GGUF bytes, row-major).
    pub fn from_gguf(ty: GgmlType, data: &[u8], n: usize, k: usize) -> Result<PackedMatrix, KernelError> {
        Self::from_gguf_as(ty, data, n, k, PackedKind::for_type(ty))
    }

    /// As `from_gguf`, forcing the F32 kind when `kind` is F32 (exact float path).
    pub fn from_gguf_as(
        ty: GgmlType,
        data: &[u8],
        n: usize,
        k: usize,
        kind: PackedKind,
    ) -> Result<PackedMatrix, KernelError> {
        let (blck, bsize) = ty.block_geometry();
        let (blck, bsize) = (blck as usize, bsize as usize);
        if blck == 0 || !k.is_multiple_of(blck) || n == 0 || k == 0 {
            return Err(KernelError::Shape(format!("{ty} matrix {n}x{k}")));
        }
        let row_bytes = k / blck * bsize;
        if data.len() != row_bytes * n {
            return Err(KernelError::Shape(format!(
                "{ty} matrix {n}x{k} needs {} bytes, got {}",
                row_bytes * n,
                data.len()
            )));
        }
        if kind == PackedKind::F32 {
            let mut f = vec![0f32; n * k];
            for (r, out) in f.chunks_exact_mut(k).enumerate() {
                dequantize_row(ty, &data[r * row_bytes..(r + 1) * row_bytes], out)?;
            }
            return Ok(PackedMatrix { kind, n, k, source: ty, q: AlignedBytes::zeroed(0), f, sb: Vec::new() });
        }
        if PackedKind::for_type(ty) != kind {
            return Err(KernelError::Shape(format!("{ty} cannot be packed as {kind:?}")));
        }
        let nb = k / 32;
        let n_groups = n.div_ceil(16);
        let rb = kind.record_bytes();
        let mut q = AlignedBytes::zeroed(n_groups * nb * rb);
        let buf = q.as_mut_slice();
        let nsb = nb.div_ceil(8);
        let sbs = sb_stride(kind);
        let mut sbv = vec![0f32; n_groups * nsb * sbs];
        // Per row: unsigned values, per-sub-block scales and mins.
        let mut u = vec![0u8; k];
        let mut sc = vec![0f32; k / 16];
        let mut mn = vec![0f32; k / 16];
        for r in 0..n {
            let row = &data[r * row_bytes..(r + 1) * row_bytes];
            decode_ints(ty, row, &mut u, &mut sc, &mut mn);
            let (g, lane) = (r / 16, r % 16);
            if kind == PackedKind::Q4K {
                for (j, blk) in row.chunks_exact(144).enumerate() {
                    sbv[(g * nsb + j) * sbs + lane] = f16_at(blk, 0);
                    sbv[(g * nsb + j) * sbs + 16 + lane] = f16_at(blk, 2);
                }
            }
            if kind == PackedKind::Q6K {
                for (j, blk) in row.chunks_exact(210).enumerate() {
                    sbv[(g * nsb + j) * sbs + lane] = f16_at(blk, 208);
                }
            }
            for b in 0..nb {
                let rec = &mut buf[(g * nb + b) * rb..(g * nb + b + 1) * rb];
                let w = &u[b * 32..b * 32 + 32];
                match kind {
                    PackedKind::Q8S => {
                        for j in 0..8 {
                            rec[j * 64 + lane * 4..j * 64 + lane * 4 + 4].copy_from_slice(&w[4 * j..4 * j + 4]);
                        }
                        // Source scale is f16: keep its exact bits.
                        let bits = f16::from_f32(sc[2 * b]).to_bits().to_le_bytes();
                        rec[512 + lane * 2..512 + lane * 2 + 2].copy_from_slice(&bits);
                    }
                    PackedKind::Q5S | PackedKind::Q4A | PackedKind::Q4K | PackedKind::Q6K => {
                        for p in 0..4 {
                            for t in 0..4 {
                                rec[p * 64 + lane * 4 + t] = (w[4 * p + t] & 0xF) | ((w[16 + 4 * p + t] & 0xF) << 4);
                            }
                        }
                        if kind == PackedKind::Q5S {
                            for t in 0..4 {
                                let mut byte = 0u8;
                                for j in 0..8 {
                                    byte |= ((w[4 * j + t] >> 4) & 1) << j;
                                }
                                rec[256 + lane * 4 + t] = byte;
                            }
                            let bits = f16::from_f32(sc[2 * b]).to_bits().to_le_bytes();
                            rec[320 + lane * 2..320 + lane * 2 + 2].copy_from_slice(&bits);
                        } else if kind == PackedKind::Q6K {
                            for j in 0..8 {
                                for t in 0..4 {
                                    rec[256 + (j / 4) * 64 + lane * 4 + t] |=
                                        ((w[4 * j + t] >> 4) & 3) << (2 * (j % 4));
                                }
                            }
                            let blk = &row[(b / 8) * 210..(b / 8 + 1) * 210];
                            rec[384 + lane] = blk[192 + 2 * (b % 8)];
                            rec[400 + lane] = blk[192 + 2 * (b % 8) + 1];
                        } else if kind == PackedKind::Q4K {
                            let blk = &row[(b / 8) * 144..(b / 8 + 1) * 144];
                            let (s6, m6) = scale_min_k4(b % 8, &blk[4..16]);
                            rec[256 + lane] = s6;
                            rec[272 + lane] = m6;
                        } else {
                            rec[256 + lane * 4..256 + lane * 4 + 4].copy_from_slice(&sc[2 * b].to_le_bytes());
                            rec[320 + lane * 4..320 + lane * 4 + 4].copy_from_slice(&mn[2 * b].to_le_bytes());
                        }
                    }
                    PackedKind::F32 => unreachable!(),
                }
            }
        }
        Ok(PackedMatrix { kind, n, k, source: ty, q, f: Vec::new(), sb: sbv })
    }
}

/// Floats per group and super-block in a packed matrix's side array.
const fn sb_stride(kind: PackedKind) -> usize {
    match kind {
        PackedKind::Q4K => 32,
        PackedKind::Q6K => 16,
        _ => 0,
    }
}

/// Decodes a row into unsigned integer values and per-16 scales/mins (a per-32
/// quantity is written to both of its 16-halves).
fn decode_ints(ty: GgmlType, row: &[u8], u: &mut [u8], sc: &mut [f32], mn: &mut [f32]) {
    let set32 = |sc: &mut [f32], b: usize, v: f32| {
        sc[2 * b] = v;
        sc[2 * b + 1] = v;
    };
    match ty {
        GgmlType::Q8_0 => {
            for (b, blk) in row.chunks_exact(34).enumerate() {
                set32(sc, b, f16_at(blk, 0));
                for j in 0..32 {
                    u[b * 32 + j] = blk[2 + j] ^ 0x80;
                }
            }
        }
        GgmlType::Q5_0 => {
            for (b, blk) in row.chunks_exact(22).enumerate() {
                set32(sc, b, f16_at(blk, 0));
                let qh = u32::from_le_bytes([blk[2], blk[3], blk[4], blk[5]]);
                for j in 0..16 {
                    u[b * 32 + j] = (blk[6 + j] & 0xF) | ((((qh >> j) & 1) as u8) << 4);
                    u[b * 32 + j + 16] = (blk[6 + j] >> 4) | ((((qh >> (j + 16)) & 1) as u8) << 4);
                }
            }
        }
        GgmlType::Q4_0 | GgmlType::Q4_1 => {
            let (bs, o) = if ty == GgmlType::Q4_0 { (18, 2) } else { (20, 4) };
            for (b, blk) in row.chunks_exact(bs).enumerate() {
                let d = f16_at(blk, 0);
                set32(sc, b, d);
                // Q4_0: w = d*q - 8d; Q4_1: w = d*q + m.
                set32(mn, b, if o == 2 { 8.0 * d } else { -f16_at(blk, 2) });
                for j in 0..16 {
                    u[b * 32 + j] = blk[o + j] & 0xF;
                    u[b * 32 + j + 16] = blk[o + j] >> 4;
                }
            }
        }
        GgmlType::Q4_K => {
            for (sb, blk) in row.chunks_exact(144).enumerate() {
                let (d, dmin) = (f16_at(blk, 0), f16_at(blk, 2));
                let (scales, qs) = (&blk[4..16], &blk[16..144]);
                for j in 0..4 {
                    for h in 0..2 {
                        let (s, m) = scale_min_k4(2 * j + h, scales);
                        let b = sb * 8 + 2 * j + h;
                        set32(sc, b, d * s as f32);
                        set32(mn, b, dmin * m as f32);
                        for l in 0..32 {
                            let byte = qs[j * 32 + l];
                            u[b * 32 + l] = if h == 0 { byte & 0xF } else { byte >> 4 };
                        }
                    }
                }
            }
        }
        GgmlType::Q6_K => {
            let mut q = [0u8; 256];
            let mut s = [0f32; 16];
            for (sb, blk) in row.chunks_exact(210).enumerate() {
                q6k_ints(blk, &mut q, &mut s);
                u[sb * 256..sb * 256 + 256].copy_from_slice(&q);
                sc[sb * 16..sb * 16 + 16].copy_from_slice(&s);
            }
        }
        _ => unreachable!("decode_ints called for {ty}, which has no packed kind"),
    }
}
