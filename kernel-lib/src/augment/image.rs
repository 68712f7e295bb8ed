//! Image buffers: `Image` is what datasets hand out (u8, HWC, 1 or 3 channels); `FloatImage` is
//! the working format of every augmentation (RGB, HWC, values in [0, 1]).

/// An 8-bit image in HWC layout with 1 (gray) or 3 (RGB) channels.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Image {
    pub width: usize,
    pub height: usize,
    pub channels: usize,
    pub pixels: Vec<u8>,
}

impl Image {
    /// Wraps a buffer, checking that its length matches the shape.
    pub fn new(width: usize, height: usize, channels: usize, pixels: Vec<u8>) -> Option<Self> {
        (matches!(channels, 1 | 3) && pixels.len() == width * height * channels).then_some(Self {
            width,
            height,
            channels,
            pixels,
        })
    }

    /// The RGB value at (x, y); gray images repeat their one channel.
    pub fn rgb(&self, x: usize, y: usize) -> [u8; 3] {
        let i = (y * self.width + x) * self.channels;
        if self.channels == 1 {
            let v = self.pixels[i];
            [v, v, v]
        } else {
            [self.pixels[i], self.pixels[i + 1], self.pixels[i + 2]]
        }
    }

    /// Converts to the float working format (gray becomes RGB).
    pub fn to_float(&self) -> FloatImage {
        let mut data = Vec::with_capacity(self.width * self.height * 3);
        for y in 0..self.height {
            for x in 0..self.width {
                data.extend(self.rgb(x, y).iter().map(|&v| v as f32 / 255.0));
            }
        }
        FloatImage {
            width: self.width,
            height: self.height,
            data,
        }
    }
}

/// An RGB float image in HWC layout, values nominally in [0, 1].
#[derive(Clone, Debug, PartialEq)]
pub struct FloatImage {
    pub width: usize,
    pub height: usize,
    pub data: Vec<f32>,
}

impl FloatImage {
    /// The RGB triple at (x, y).
    pub fn rgb(&self, x: usize, y: usize) -> [f32; 3] {
        let i = (y * self.width + x) * 3;
        [self.data[i], self.data[i + 1], self.data[i + 2]]
    }

    /// Mirrors the image left to right.
    pub fn flip_horizontal(&mut self) {
        let w = self.width;
        for row in self.data.chunks_exact_mut(w * 3) {
            for x in 0..w / 2 {
                for c in 0..3 {
                    row.swap(x * 3 + c, (w - 1 - x) * 3 + c);
                }
            }
        }
    }

    /// The image as a CHW buffer (the layout tensors use).
    pub fn to_chw(&self) -> Vec<f32> {
        let n = self.width * self.height;
        let mut out = vec![0.0; n * 3];
        for (i, px) in self.data.chunks_exact(3).enumerate() {
            for c in 0..3 {
                out[c * n + i] = px[c];
            }
        }
        out
    }
}
