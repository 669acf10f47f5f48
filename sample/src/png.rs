//! A tiny PNG encoder for the sample avatars: a 24 x 24 symmetric "identicon" in two colours,
//! written as uncompressed deflate blocks, so it needs no compression library and is
//! byte-for-byte deterministic.

use crate::rng::Rng;

const SIDE: usize = 24;
const CELL: usize = 4;
const MARGIN: usize = 2;
const ROW_LEN: usize = 1 + SIDE * 3;
const RAW_LEN: usize = SIDE * ROW_LEN;
const ZLIB_LEN: usize = 2 + 5 + RAW_LEN + 4;

/// Size in bytes of every identicon: signature, IHDR, IDAT, IEND.
pub(crate) const IDENTICON_LEN: usize = 8 + (12 + 13) + (12 + ZLIB_LEN) + 12;

/// A valid PNG identicon drawn from `r`.
pub(crate) fn identicon(r: &mut Rng) -> Vec<u8> {
    let fg = [
        40 + r.below(160) as u8,
        40 + r.below(160) as u8,
        40 + r.below(160) as u8,
    ];
    let bg = [240u8, 240, 240];
    // 5 x 5 cells, mirrored left to right: 15 random bits.
    let bits = r.next_u64();
    let on = |cx: usize, cy: usize| {
        let cx = if cx > 2 { 4 - cx } else { cx };
        bits >> (cy * 3 + cx) & 1 == 1
    };

    let mut raw = Vec::with_capacity(RAW_LEN);
    for y in 0..SIDE {
        raw.push(0); // filter: none
        for x in 0..SIDE {
            let inside =
                (MARGIN..SIDE - MARGIN).contains(&x) && (MARGIN..SIDE - MARGIN).contains(&y);
            let colour = if inside && on((x - MARGIN) / CELL, (y - MARGIN) / CELL) {
                fg
            } else {
                bg
            };
            raw.extend_from_slice(&colour);
        }
    }

    let mut zlib = Vec::with_capacity(ZLIB_LEN);
    zlib.extend_from_slice(&[0x78, 0x01]);
    // One final stored block (RAW_LEN < 65,536).
    let len = RAW_LEN as u16;
    zlib.push(1);
    zlib.extend_from_slice(&len.to_le_bytes());
    zlib.extend_from_slice(&(!len).to_le_bytes());
    zlib.extend_from_slice(&raw);
    zlib.extend_from_slice(&adler32(&raw).to_be_bytes());

    let mut ihdr = Vec::with_capacity(13);
    ihdr.extend_from_slice(&(SIDE as u32).to_be_bytes());
    ihdr.extend_from_slice(&(SIDE as u32).to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]); // 8-bit RGB, deflate, no filter, no interlace

    let mut png = Vec::with_capacity(IDENTICON_LEN);
    png.extend_from_slice(b"\x89PNG\r\n\x1a\n");
    chunk(&mut png, b"IHDR", &ihdr);
    chunk(&mut png, b"IDAT", &zlib);
    chunk(&mut png, b"IEND", &[]);
    png
}

fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    let start = out.len();
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    let crc = crc32(&out[start..]);
    out.extend_from_slice(&crc.to_be_bytes());
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn adler32(data: &[u8]) -> u32 {
    let (mut a, mut b) = (1u32, 0u32);
    for &x in data {
        a = (a + u32::from(x)) % 65_521;
        b = (b + a) % 65_521;
    }
    (b << 16) | a
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksums_match_known_values() {
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
        assert_eq!(adler32(b"Wikipedia"), 0x11e6_0398);
    }

    #[test]
    fn identicons_have_the_announced_length_and_signature() {
        let png = identicon(&mut Rng::new(1, 2, 3));
        assert_eq!(png.len(), IDENTICON_LEN);
        assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"));
        assert!(png.ends_with(&[0xae, 0x42, 0x60, 0x82]));
    }
}
