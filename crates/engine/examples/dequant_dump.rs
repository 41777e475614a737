//! Prints the first values of rows of a tensor, dequantized by specdec:
//! `cargo run --example dequant_dump -- MODEL TENSOR ROW...` (debugging aid).
use specdec_gguf::GgufFile;
use specdec_kernels::quant::dequantize_row;

fn main() {
    let a: Vec<String> = std::env::args().collect();
    let f = GgufFile::open(&a[1]).unwrap();
    let t = f.header.tensor(&a[2]).unwrap();
    let k = t.dims[0] as usize;
    let (blck, bs) = t.ty.block_geometry();
    let rb = k / blck as usize * bs as usize;
    for r in &a[3..] {
        let r: usize = r.parse().unwrap();
        let mut out = vec![0f32; k];
        dequantize_row(t.ty, &f.tensor_data(t)[r * rb..(r + 1) * rb], &mut out).unwrap();
        let s: f64 = out.iter().map(|v| *v as f64).sum();
        println!("{} row {r}: sum {s:.6} first {:?}", a[2], &out[..6]);
    }
}
