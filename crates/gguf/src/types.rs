//! ggml tensor types: ids, block sizes and byte sizes, in one place.

/// A ggml tensor element type as stored in GGUF tensor infos.
#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GgmlType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q8_1,
    Q2_K,
    Q3_K,
    Q4_K,
    Q5_K,
    Q6_K,
    Q8_K,
    BF16,
    /// A type id ggml defines that specdec cannot decode (IQ quants, TQ, ...).
    /// Parsing still succeeds when its block geometry is known, so `inspect`
    /// can show the file; loading weights of this type is an error.
    Other(u32),
}

impl GgmlType {
    /// Maps a GGUF type id. `None` for ids ggml never defined or removed
    /// (Q4_2 = 4, Q4_3 = 5) and ids past the known range.
    pub fn from_id(id: u32) -> Option<GgmlType> {
        use GgmlType::*;
        Some(match id {
            0 => F32,
            1 => F16,
            2 => Q4_0,
            3 => Q4_1,
            6 => Q5_0,
            7 => Q5_1,
            8 => Q8_0,
            9 => Q8_1,
            10 => Q2_K,
            11 => Q3_K,
            12 => Q4_K,
            13 => Q5_K,
            14 => Q6_K,
            15 => Q8_K,
            30 => BF16,
            // IQ2_XXS .. IQ4_XS, I8..F64, IQ1_M, TQ1_0, TQ2_0, MXFP4: known geometry, no decoder.
            16..=29 | 31..=36 | 39 => Other(id),
            _ => return None,
        })
    }

    pub fn id(self) -> u32 {
        use GgmlType::*;
        match self {
            F32 => 0,
            F16 => 1,
            Q4_0 => 2,
            Q4_1 => 3,
            Q5_0 => 6,
            Q5_1 => 7,
            Q8_0 => 8,
            Q8_1 => 9,
            Q2_K => 10,
            Q3_K => 11,
            Q4_K => 12,
            Q5_K => 13,
            Q6_K => 14,
            Q8_K => 15,
            BF16 => 30,
            Other(id) => id,
        }
    }

    /// (elements per block, bytes per block).
    pub fn block_geometry(self) -> (u64, u64) {
        use GgmlType::*;
        match self {
            F32 => (1, 4),
            F16 | BF16 => (1, 2),
            Q4_0 => (32, 18),
            Q4_1 => (32, 20),
            Q5_0 => (32, 22),
            Q5_1 => (32, 24),
            Q8_0 => (32, 34),
            Q8_1 => (32, 36),
            Q2_K => (256, 84),
            Q3_K => (256, 110),
            Q4_K => (256, 144),
            Q5_K => (256, 176),
            Q6_K => (256, 210),
            Q8_K => (256, 292),
            Other(id) => match id {
                16 => (256, 66),   // IQ2_XXS
                17 => (256, 74),   // IQ2_XS
                18 => (256, 98),   // IQ3_XXS
                19 => (256, 50),   // IQ1_S
                20 => (32, 18),    // IQ4_NL
                21 => (256, 110),  // IQ3_S
                22 => (256, 82),   // IQ2_S
                23 => (256, 136),  // IQ4_XS
                24 => (1, 1),      // I8
                25 => (1, 2),      // I16
                26 => (1, 4),      // I32
                27 => (1, 8),      // I64
                28 => (1, 8),      // F64
                29 => (256, 56),   // IQ1_M
                31..=33 => (0, 0), // removed Q4_0_4_4 .. Q4_0_8_8
                34 => (256, 54),   // TQ1_0
                35 => (256, 66),   // TQ2_0
                36 => (0, 0),      // removed IQ4_NL_4_4 family
                39 => (32, 17),    // MXFP4
                _ => (0, 0),
            },
        }
    }

    pub fn name(self) -> String {
        match self {
            GgmlType::Other(id) => format!("type#{id}"),
            t => format!("{t:?}"),
        }
    }
}

impl std::fmt::Display for GgmlType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name())
    }
}
