//! MNIST / Fashion-MNIST IDX files, raw or gzip-compressed (detected by the gzip magic).

use crate::augment::Image;
use crate::error::{Error, Result};
use std::io::Read;
use std::path::Path;

fn read_maybe_gz(path: &Path) -> Result<Vec<u8>> {
    let raw = std::fs::read(path).map_err(|e| Error::data(path, e.to_string()))?;
    if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .map_err(|e| Error::data(path, format!("corrupt gzip stream: {e}")))?;
        Ok(out)
    } else {
        Ok(raw)
    }
}

fn header(path: &Path, bytes: &[u8], magic: u32, dims: usize) -> Result<Vec<usize>> {
    let need = 4 + 4 * dims;
    if bytes.len() < need {
        return Err(Error::data(path, "file too short for an IDX header"));
    }
    let m = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    if m != magic {
        return Err(Error::data(
            path,
            format!("wrong IDX magic 0x{m:08x}, expected 0x{magic:08x}"),
        ));
    }
    let shape: Vec<usize> = (0..dims)
        .map(|d| {
            let o = 4 + 4 * d;
            u32::from_be_bytes([bytes[o], bytes[o + 1], bytes[o + 2], bytes[o + 3]]) as usize
        })
        .collect();
    let body: usize = shape.iter().product();
    if bytes.len() != need + body {
        return Err(Error::data(
            path,
            format!(
                "IDX header promises {body} bytes of data but the file holds {} (truncated?)",
                bytes.len().saturating_sub(need)
            ),
        ));
    }
    Ok(shape)
}

/// Reads an IDX3 image file (magic 0x803) into gray images.
pub fn read_idx_images(path: &Path) -> Result<Vec<Image>> {
    let bytes = read_maybe_gz(path)?;
    let s = header(path, &bytes, 0x0803, 3)?;
    let (n, h, w) = (s[0], s[1], s[2]);
    if n == 0 || h == 0 || w == 0 {
        return Err(Error::data(path, "IDX file holds no images"));
    }
    Ok(bytes[16..]
        .chunks_exact(h * w)
        .take(n)
        .map(|c| Image {
            width: w,
            height: h,
            channels: 1,
            pixels: c.to_vec(),
        })
        .collect())
}

/// Reads an IDX1 label file (magic 0x801).
pub fn read_idx_labels(path: &Path) -> Result<Vec<usize>> {
    let bytes = read_maybe_gz(path)?;
    header(path, &bytes, 0x0801, 1)?;
    Ok(bytes[8..].iter().map(|&b| b as usize).collect())
}
