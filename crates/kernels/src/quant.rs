//! Reference (scalar) decoding of ggml block formats, written from the format
//! definitions. This is the ground truth the packed kernels are tested against.

use half::{bf16, f16};
use specdec_gguf::GgmlType;

use crate::KernelError;

#[inline]
pub(crate) fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([b[i], b[i + 1]])).to_f32()
}

/// 6-bit scale and min of sub-block `j` of a Q4_K/Q5_K super-block.
#[inline]
pub(crate) fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        ((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4))
    }
}

/// Whether `dequantize_row` can decode this type.
pub fn can_dequantize(ty: GgmlType) -> bool {
    !matches!(ty, GgmlType::Other(_))
}

/// Decodes one row (`out.len()` elements) of type `ty` from `src`.
pub fn dequantize_row(ty: GgmlType, src: &[u8], out: &mut [f32]) -> Result<(), KernelError> {
    let (blck, bsize) = ty.block_geometry();
    let (blck, bsize) = (blck as usize, bsize as usize);
    if blck == 0 || !out.len().is_multiple_of(blck) || src.len() != out.len() / blck * bsize {
        return Err(KernelError::Shape(format!("dequantize {ty}: {} bytes for {} elements", src.len(), out.len())));
    }
    for (b, y) in src.chunks_exact(bsize).zip(out.chunks_exact_mut(blck)) {
        match ty {
            GgmlType::F32 => y[0] = f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            GgmlType::F16 => y[0] = f16_at(b, 0),
            GgmlType::BF16 => y[0] = bf16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32(),
            GgmlType::Q4_0 => {
                let d = f16_at(b, 0);
                for j in 0..16 {
                    y[j] = d * ((b[2 + j] & 0xF) as i32 - 8) as f32;
                    y[j + 16] = d * ((b[2 + j] >> 4) as i32 - 8) as f32;
                }
            }
            GgmlType::Q4_1 => {
                let (d, m) = (f16_at(b, 0), f16_at(b, 2));
                for j in 0..16 {
                    y[j] = d * (b[4 + j] & 0xF) as f32 + m;
                    y[j + 16] = d * (b[4 + j] >> 4) as f32 + m;
                }
            }
            GgmlType::Q5_0 | GgmlType::Q5_1 => {
                let affine = ty == GgmlType::Q5_1;
                let d = f16_at(b, 0);
                let (m, o) = if affine { (f16_at(b, 2), 4) } else { (0.0, 2) };
                let qh = u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
                let qs = &b[o + 4..o + 20];
                for j in 0..16 {
                    let h0 = ((qh >> j) & 1) << 4;
                    let h1 = ((qh >> (j + 16)) & 1) << 4;
                    let x0 = ((qs[j] & 0xF) as u32 | h0) as i32;
                    let x1 = ((qs[j] >> 4) as u32 | h1) as i32;
                    if affine {
                        y[j] = d * x0 as f32 + m;
                        y[j + 16] = d * x1 as f32 + m;
                    } else {
                        y[j] = d * (x0 - 16) as f32;
                        y[j + 16] = d * (x1 - 16) as f32;
                    }
                }
            }
            GgmlType::Q8_0 | GgmlType::Q8_1 => {
                let d = f16_at(b, 0);
                let o = if ty == GgmlType::Q8_1 { 4 } else { 2 };
                for j in 0..32 {
                    y[j] = d * (b[o + j] as i8) as f32;
                }
            }
            GgmlType::Q8_K => {
                let d = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                for j in 0..256 {
                    y[j] = d * (b[4 + j] as i8) as f32;
                }
            }
            GgmlType::Q2_K => {
                let (scales, qs) = (&b[0..16], &b[16..80]);
                let (d, dmin) = (f16_at(b, 80), f16_at(b, 82));
                let mut is = 0;
                for n in 0..2 {
                    let q = &qs[n * 32..n * 32 + 32];
                    for j in 0..4 {
                        let shift = 2 * j;
                        for half in 0..2 {
                            let sc = scales[is];
                            is += 1;
                            let (dl, ml) = (d * (sc & 0xF) as f32, dmin * (sc >> 4) as f32);
                            for l in 0..16 {
                                let v = (q[l + 16 * half] >> shift) & 3;
                                y[n * 128 + j * 32 + half * 16 + l] = dl * v as f32 - ml;
                            }
                        }
                    }
                }
            }
            GgmlType::Q3_K => {
                let (hm, qs, sc_raw) = (&b[0..32], &b[32..96], &b[96..108]);
                let d = f16_at(b, 108);
                let scales = q3k_scales(sc_raw);
                let mut is = 0;
                let mut m = 1u8;
                for n in 0..2 {
                    let q = &qs[n * 32..n * 32 + 32];
                    for j in 0..4 {
                        let shift = 2 * j;
                        for half in 0..2 {
                            let dl = d * (scales[is] as i32 - 32) as f32;
                            is += 1;
                            for l in 0..16 {
                                let li = l + 16 * half;
                                let v = ((q[li] >> shift) & 3) as i32 - if hm[li] & m != 0 { 0 } else { 4 };
                                y[n * 128 + j * 32 + half * 16 + l] = dl * v as f32;
                            }
                        }
                        m <<= 1;
                    }
                }
            }
            GgmlType::Q4_K | GgmlType::Q5_K => {
                let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
                let scales = &b[4..16];
                let five = ty == GgmlType::Q5_K;
                let (qh, ql) = if five { (&b[16..48], &b[48..176]) } else { (&b[0..0], &b[16..144]) };
                for j in 0..4 {
                    let (sc1, m1) = scale_min_k4(2 * j, scales);
                    let (sc2, m2) = scale_min_k4(2 * j + 1, scales);
                    let (d1, m1) = (d * sc1 as f32, dmin * m1 as f32);
                    let (d2, m2) = (d * sc2 as f32, dmin * m2 as f32);
                    let q = &ql[j * 32..j * 32 + 32];
                    for l in 0..32 {
                        let (mut lo, mut hi) = ((q[l] & 0xF) as u32, (q[l] >> 4) as u32);
                        if five {
                            lo += (((qh[l] >> (2 * j)) & 1) as u32) << 4;
                            hi += (((qh[l] >> (2 * j + 1)) & 1) as u32) << 4;
                        }
                        y[j * 64 + l] = d1 * lo as f32 - m1;
                        y[j * 64 + 32 + l] = d2 * hi as f32 - m2;
                    }
                }
            }
            GgmlType::Q6_K => {
                let mut q = [0u8; 256];
                let mut sc = [0f32; 16];
                q6k_ints(b, &mut q, &mut sc);
                for i in 0..256 {
                    y[i] = sc[i / 16] * (q[i] as i32 - 32) as f32;
                }
            }
            GgmlType::Other(_) => return Err(KernelError::Unsupported(ty)),
        }
    }
    Ok(())
}

/// Unpacks Q3_K's twelve bytes of 6-bit scales into sixteen values (biased by 32).
fn q3k_scales(raw: &[u8]) -> [u8; 16] {
    let mut aux = [0u32; 4];
    for i in 0..3 {
        aux[i] = u32::from_le_bytes([raw[4 * i], raw[4 * i + 1], raw[4 * i + 2], raw[4 * i + 3]]);
    }
    let (k1, k2) = (0x0303_0303u32, 0x0f0f_0f0fu32);
    let tmp = aux[2];
    aux[2] = ((aux[0] >> 4) & k2) | (((tmp >> 4) & k1) << 4);
    aux[3] = ((aux[1] >> 4) & k2) | (((tmp >> 6) & k1) << 4);
    aux[0] = (aux[0] & k2) | ((tmp & k1) << 4);
    aux[1] = (aux[1] & k2) | (((tmp >> 2) & k1) << 4);
    let mut out = [0u8; 16];
    for i in 0..4 {
        out[4 * i..4 * i + 4].copy_from_slice(&aux[i].to_le_bytes());
    }
    out
}

/// Q6_K super-block -> 256 unsigned 6-bit values (weight = scale * (q - 32))
/// and sixteen per-16 scales (d * sc).
pub(crate) fn q6k_ints(b: &[u8], q: &mut [u8; 256], sc: &mut [f32; 16]) {
    let (ql, qh, scales) = (&b[0..128], &b[128..192], &b[192..208]);
    let d = f16_at(b, 208);
    for (i, s) in sc.iter_mut().enumerate() {
        *s = d * (scales[i] as i8) as f32;
    }
    for n in 0..2 {
        let (ql, qh) = (&ql[n * 64..], &qh[n * 32..]);
        for l in 0..32 {
            q[n * 128 + l] = (ql[l] & 0xF) | ((qh[l] & 3) << 4);
            q[n * 128 + l + 32] = (ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4);
            q[n * 128 + l + 64] = (ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4);
            q[n * 128 + l + 96] = (ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4);
        }
    }
}
