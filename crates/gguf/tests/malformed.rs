//! The malformed-GGUF suite of ../shared/notes/reliability-test-plan.md: every
//! case gives a typed error naming the field and value, never a panic, and
//! allocates at most 2 x input + 16 MiB (counted by a global allocator).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use specdec_gguf::{parse, Array, GgmlType, GgufError, GgufWriter, RawWriter, Value};

struct Counting;
static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let now = CURRENT.fetch_add(l.size(), Ordering::SeqCst) + l.size();
        PEAK.fetch_max(now, Ordering::SeqCst);
        System.alloc(l)
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        CURRENT.fetch_sub(l.size(), Ordering::SeqCst);
        System.dealloc(p, l)
    }
}

#[global_allocator]
static A: Counting = Counting;

/// Parses in isolation and returns the result and the extra peak allocation.
fn parse_measured(bytes: &[u8]) -> (Result<specdec_gguf::Gguf, GgufError>, usize) {
    let base = CURRENT.load(Ordering::SeqCst);
    PEAK.store(base, Ordering::SeqCst);
    let r = std::panic::catch_unwind(|| parse(bytes)).expect("parser panicked");
    let extra = PEAK.load(Ordering::SeqCst).saturating_sub(base);
    (r, extra)
}

/// Asserts a typed error whose message contains every `needle`.
fn expect_err(case: &str, bytes: &[u8], needles: &[&str]) {
    let (r, extra) = parse_measured(bytes);
    let e = match r {
        Ok(_) => panic!("{case}: parsed but should fail"),
        Err(e) => e,
    };
    let msg = e.to_string();
    for n in needles {
        assert!(msg.contains(n), "{case}: error {msg:?} lacks {n:?}");
    }
    // Tests in this binary run serially enough for the bound to be meaningful:
    // the limit is generous and concurrent tests allocate little.
    assert!(extra <= 2 * bytes.len() + (16 << 20), "{case}: allocated {extra} bytes for {} input bytes", bytes.len());
}

fn header(n_tensors: u64, n_kv: u64) -> RawWriter {
    let mut w = RawWriter::new();
    w.header(3, n_tensors, n_kv);
    w
}

/// A valid file with two tensors, used as the base for mutations.
fn valid() -> Vec<u8> {
    let mut g = GgufWriter::new();
    g.kv("general.architecture", Value::String("test".into()));
    g.kv("general.alignment", Value::U32(32));
    g.tensor("a", &[32, 2], GgmlType::F32, vec![1u8; 256]);
    g.tensor("b", &[32], GgmlType::Q8_0, vec![2u8; 34]);
    g.to_bytes()
}

#[test]
fn valid_files_load() {
    let g = parse(&valid()).unwrap();
    assert_eq!(g.tensors.len(), 2);
    assert_eq!(g.tensor("b").unwrap().ty, GgmlType::Q8_0);
    assert_eq!(g.get("general.architecture").unwrap().as_str(), Some("test"));
    // GGUF-EMPTY-OK: no tensors and no metadata.
    let e = header(0, 0).buf.clone();
    let g = parse(&e).unwrap();
    assert!(g.tensors.is_empty() && g.metadata.is_empty());
    // Round trip of every value type through the writer.
    let mut w = GgufWriter::new();
    let vals = vec![
        Value::U8(1),
        Value::I8(-1),
        Value::U16(2),
        Value::I16(-2),
        Value::U32(3),
        Value::I32(-3),
        Value::F32(1.5),
        Value::Bool(true),
        Value::String("s".into()),
        Value::U64(4),
        Value::I64(-4),
        Value::F64(2.5),
        Value::Array(Array::String(vec!["x".into(), "yz".into()])),
        Value::Array(Array::F32(vec![1.0, 2.0])),
    ];
    for (i, v) in vals.iter().enumerate() {
        w.kv(&format!("k{i}"), v.clone());
    }
    let g = parse(&w.to_bytes()).unwrap();
    for (i, v) in vals.iter().enumerate() {
        assert_eq!(g.get(&format!("k{i}")), Some(v));
    }
}

#[test]
fn header_cases() {
    let v = valid();
    // GGUF-HDR-TRUNC-{0,3,7,15,23}
    for n in [0usize, 3, 7, 15, 23] {
        expect_err(&format!("GGUF-HDR-TRUNC-{n}"), &v[..n], &["truncated"]);
    }
    let mut b = v.clone();
    b[..4].copy_from_slice(b"GGUX");
    expect_err("GGUF-HDR-BAD-MAGIC", &b, &["magic"]);
    b[..4].copy_from_slice(b"FUGG");
    expect_err("GGUF-HDR-BYTESWAP-MAGIC", &b, &["byte-swapped"]);
    for (name, ver) in [("0", 0u32), ("1", 1), ("FUTURE", 99), ("BYTESWAP", 3u32.swap_bytes())] {
        let mut b = v.clone();
        b[4..8].copy_from_slice(&ver.to_le_bytes());
        expect_err(&format!("GGUF-HDR-VER-{name}"), &b, &["version", &ver.to_string()]);
    }
    for (name, n) in [("U64MAX", u64::MAX), ("2^63", 1 << 63), ("EXCEEDS-REMAINING", 1000)] {
        expect_err(&format!("GGUF-HDR-NTENSORS-{name}"), &header(n, 0).buf, &["tensor_count", &n.to_string()]);
    }
    for (name, n) in [("U64MAX", u64::MAX), ("EXCEEDS-REMAINING", 1000)] {
        expect_err(&format!("GGUF-HDR-NKV-{name}"), &header(0, n).buf, &["metadata_kv_count", &n.to_string()]);
    }
}

#[test]
fn metadata_cases() {
    let mut w = header(0, 1);
    w.u64(u64::MAX).bytes(&[0; 64]);
    expect_err("GGUF-KV-KEYLEN-U64MAX", &w.buf, &["key #0", "18446744073709551615"]);
    let mut w = header(0, 1);
    w.u64(50).bytes(b"abcdefghijklmnop");
    expect_err("GGUF-KV-KEYLEN-EXCEEDS-REMAINING", &w.buf, &["truncated", "key #0"]);
    let mut w = header(0, 1);
    w.u64(0).bytes(&[0; 64]);
    expect_err("GGUF-KV-KEYLEN-ZERO", &w.buf, &["empty key"]);
    let mut w = header(0, 1);
    w.u64(2).bytes(&[0xff, 0xfe]).u32(4).u32(1);
    expect_err("GGUF-KV-KEY-NONUTF8", &w.buf, &["UTF-8"]);
    let mut w = header(0, 2);
    w.kv("k", &Value::U32(1)).kv("k", &Value::U32(2));
    expect_err("GGUF-KV-DUP-KEY", &w.buf, &["duplicate", "\"k\""]);
    for (name, t) in [("13", 13u32), ("U32MAX", u32::MAX)] {
        let mut w = header(0, 1);
        w.str("k").u32(t).u64(0);
        expect_err(&format!("GGUF-KV-TYPE-{name}"), &w.buf, &["unknown value type", &t.to_string()]);
    }
    let mut w = header(0, 1);
    w.str("k").u32(9).u32(9).u64(1);
    expect_err("GGUF-KV-TYPE-NESTED-ARRAY", &w.buf, &["nested"]);
    let mut w = header(0, 1);
    w.str("k").u32(9).u32(4).u64(u64::MAX);
    expect_err("GGUF-KV-ARRLEN-U64MAX", &w.buf, &["array length", "\"k\""]);
    let mut w = header(0, 1);
    w.str("k").u32(9).u32(10).u64(1 << 61);
    expect_err("GGUF-KV-ARRLEN-OVERFLOW-MUL", &w.buf, &["array length"]);
    let mut w = header(0, 1);
    w.str("k").u32(9).u32(4).u64(1000).u32(1);
    expect_err("GGUF-KV-ARRLEN-EXCEEDS-REMAINING", &w.buf, &["array length", "1000"]);
    let mut w = header(0, 1);
    w.str("k").u32(9).u32(8).u64(3).u64(1_000_000).bytes(&[b'x'; 40]);
    expect_err("GGUF-KV-STRARR-SUMLEN-EXCEEDS", &w.buf, &["truncated"]);
    let mut w = header(0, 1);
    w.str("k").u32(7).bytes(&[2]);
    expect_err("GGUF-KV-BOOL-2", &w.buf, &["bool", "2"]);
    let mut w = header(0, 1);
    w.str("k").u32(10).bytes(&[1, 2, 3]);
    expect_err("GGUF-KV-TRUNC-MIDVALUE", &w.buf, &["truncated", "\"k\""]);
}

#[test]
fn alignment_cases() {
    for (name, v) in [
        ("0", Value::U32(0)),
        ("13", Value::U32(13)),
        ("2^31", Value::U32(1 << 31)),
        ("INT32-TYPED", Value::I32(32)),
        ("STRING-TYPED", Value::String("32".into())),
    ] {
        let mut w = header(0, 1);
        w.kv("general.alignment", &v);
        expect_err(&format!("GGUF-ALIGN-{name}"), &w.buf, &["general.alignment"]);
    }
    // Missing alignment defaults to 32.
    let mut w = header(1, 0);
    w.tensor_info("t", &[8], 0, 0).pad_to(32).bytes(&[0; 32]);
    assert_eq!(parse(&w.buf).unwrap().alignment, 32);
}

fn one_tensor(name: &str, dims: &[u64], ty: u32, offset: u64, data: usize) -> Vec<u8> {
    let mut w = header(1, 0);
    w.tensor_info(name, dims, ty, offset).pad_to(32).bytes(&vec![0; data]);
    w.buf
}

#[test]
fn tensor_info_cases() {
    let mut w = header(1, 0);
    w.u64(u64::MAX).bytes(&[0; 64]);
    expect_err("GGUF-TI-NAMELEN-U64MAX", &w.buf, &["tensor #0", "name length"]);
    expect_err("GGUF-TI-NAMELEN-65", &one_tensor(&"x".repeat(65), &[8], 0, 0, 32), &["name length 65"]);
    let mut w = header(2, 0);
    w.tensor_info("t", &[8], 0, 0).tensor_info("t", &[8], 0, 32).pad_to(32).bytes(&[0; 64]);
    expect_err("GGUF-TI-DUP-NAME", &w.buf, &["duplicate tensor", "\"t\""]);
    for (name, n) in [("0", 0u32), ("5", 5), ("U32MAX", u32::MAX)] {
        let mut w = header(1, 0);
        w.str("t").u32(n).u64(8).u64(8).u64(8).u64(8).u64(8).u32(0).u64(0);
        expect_err(&format!("GGUF-TI-NDIMS-{name}"), &w.buf, &["n_dims", &n.to_string()]);
    }
    expect_err("GGUF-TI-DIM-NEG", &one_tensor("t", &[(-5i64) as u64], 0, 0, 32), &["dims[0]", "-5"]);
    expect_err("GGUF-TI-DIM-ZERO", &one_tensor("t", &[8, 0], 0, 0, 32), &["dims[1] = 0"]);
    expect_err("GGUF-TI-NELEM-OVERFLOW", &one_tensor("t", &[(1 << 42) + 1, 1 << 30], 0, 0, 32), &["overflows"]);
    expect_err("GGUF-TI-NBYTES-OVERFLOW", &one_tensor("t", &[1 << 62], 0, 0, 32), &["t"]);
    expect_err("GGUF-TI-ROW-NOT-BLOCK-MULTIPLE", &one_tensor("t", &[33], 8, 0, 64), &["block size 32"]);
    expect_err("GGUF-TI-TYPE-OOR", &one_tensor("t", &[8], 1000, 0, 32), &["type id 1000"]);
    expect_err("GGUF-TI-TYPE-NEG", &one_tensor("t", &[8], (-1i32) as u32, 0, 32), &["as i32: -1"]);
    expect_err("GGUF-TI-TYPE-REMOVED", &one_tensor("t", &[8], 4, 0, 32), &["type id 4"]);
    expect_err("GGUF-TI-OFFSET-MISALIGNED", &one_tensor("t", &[8], 0, 3, 64), &["offset 3"]);
    let mut w = header(2, 0);
    w.tensor_info("a", &[8], 0, 0).tensor_info("b", &[8], 0, 64).pad_to(32).bytes(&[0; 128]);
    expect_err("GGUF-TI-OFFSET-GAP", &w.buf, &["\"b\"", "offset 64", "expected 32"]);
    let mut w = header(2, 0);
    w.tensor_info("a", &[16], 0, 0).tensor_info("b", &[8], 0, 32).pad_to(32).bytes(&[0; 128]);
    expect_err("GGUF-TI-OFFSET-OVERLAP", &w.buf, &["\"b\"", "expected 64"]);
    let mut w = header(2, 0);
    w.tensor_info("a", &[8], 0, 32).tensor_info("b", &[8], 0, 0).pad_to(32).bytes(&[0; 64]);
    expect_err("GGUF-TI-OFFSET-OUT-OF-ORDER", &w.buf, &["\"a\"", "offset 32", "expected 0"]);
    expect_err("GGUF-TI-OFFSET-BEYOND-EOF", &one_tensor("t", &[1024], 0, 0, 32), &["truncated"]);
    expect_err("GGUF-TI-OFFSET-U64MAX", &one_tensor("t", &[8], 0, u64::MAX, 32), &["offset 18446744073709551615"]);
    let v = valid();
    expect_err("GGUF-DATA-TRUNCATED", &v[..v.len() - 40], &["truncated"]);
    // GGUF-DATA-TRAILING-BYTES: accepted and reported.
    let mut t = v.clone();
    t.extend_from_slice(&[0; 100]);
    assert!(parse(&t).unwrap().trailing_bytes >= 100);
}

#[test]
fn every_truncation_of_a_valid_file_is_an_error_not_a_panic() {
    let v = valid();
    let full = parse(&v).unwrap();
    let data_end = full.tensors.last().map(|t| t.offset + t.n_bytes).unwrap() as usize;
    for n in 0..data_end {
        let (r, _) = parse_measured(&v[..n]);
        assert!(r.is_err(), "prefix of {n} bytes parsed");
    }
}

#[test]
fn random_byte_flips_never_panic() {
    let v = valid();
    let mut x = 0x1234_5678_9abc_def0u64;
    for _ in 0..20_000 {
        let mut b = v.clone();
        for _ in 0..3 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let i = (x as usize) % b.len();
            b[i] = (x >> 32) as u8;
        }
        let _ = parse_measured(&b);
    }
}
