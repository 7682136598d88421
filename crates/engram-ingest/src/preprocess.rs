//! Image decoding and preprocessing into the model's input tensor.
//!
//! Decode PNG or JPEG; convert grayscale (or anything else) to RGB; resize
//! the short side to `image_size / crop_fraction` with a bicubic filter;
//! centre-crop `image_size` x `image_size`; scale to [0, 1] and normalise
//! each channel with the model's mean and std; lay out as CHW.

use image::imageops::FilterType;
use image::{DynamicImage, ImageReader, Limits, RgbImage};
use std::io::Cursor;

use engram_core::config::EmbedderConfig;

/// Turns encoded images into normalised CHW float tensors.
#[derive(Debug, Clone)]
pub struct Preprocessor {
    size: u32,
    crop_fraction: f32,
    mean: [f32; 3],
    std: [f32; 3],
    max_pixels: u64,
}

impl Preprocessor {
    pub fn new(config: &EmbedderConfig, max_pixels: u64) -> Self {
        Preprocessor {
            size: config.image_size,
            crop_fraction: config.crop_fraction,
            mean: config.mean,
            std: config.std,
            max_pixels,
        }
    }

    /// Side of the square the model sees.
    pub fn size(&self) -> u32 {
        self.size
    }

    /// Floats per preprocessed image (3 x size x size).
    pub fn tensor_len(&self) -> usize {
        3 * (self.size as usize) * (self.size as usize)
    }

    /// Decodes PNG or JPEG bytes, refusing empty input, unknown formats and
    /// images over the pixel limit before allocating their pixels.
    pub fn decode(&self, bytes: &[u8]) -> Result<DynamicImage, String> {
        if bytes.is_empty() {
            return Err("image is empty".into());
        }
        let mut reader = ImageReader::new(Cursor::new(bytes))
            .with_guessed_format()
            .map_err(|e| format!("cannot read image: {e}"))?;
        match reader.format() {
            Some(image::ImageFormat::Png | image::ImageFormat::Jpeg) => {}
            Some(other) => {
                return Err(format!(
                    "unsupported image format {other:?}; send PNG or JPEG"
                ));
            }
            None => return Err("not a PNG or JPEG image".into()),
        }
        reader.limits(limits_for(self.max_pixels));
        let (width, height) = reader
            .into_dimensions()
            .map_err(|e| format!("cannot decode image: {e}"))?;
        if u64::from(width) * u64::from(height) > self.max_pixels {
            return Err(format!(
                "image is {width}x{height}, over the limit of {} pixels",
                self.max_pixels
            ));
        }
        let mut reader = ImageReader::new(Cursor::new(bytes))
            .with_guessed_format()
            .map_err(|e| format!("cannot read image: {e}"))?;
        reader.limits(limits_for(self.max_pixels));
        let image = reader
            .decode()
            .map_err(|e| format!("cannot decode image: {e}"))?;
        if image.width() == 0 || image.height() == 0 {
            return Err("image has no pixels".into());
        }
        Ok(image)
    }

    /// Resizes and crops to the model's square input.
    pub fn fit(&self, image: &DynamicImage) -> RgbImage {
        let rgb = image.to_rgb8();
        let (w, h) = rgb.dimensions();
        let short_target = ((self.size as f32) / self.crop_fraction)
            .round()
            .max(self.size as f32);
        let scale = short_target / w.min(h) as f32;
        let new_w = ((w as f32 * scale).round() as u32).max(self.size);
        let new_h = ((h as f32 * scale).round() as u32).max(self.size);
        let resized = if (new_w, new_h) == (w, h) {
            rgb
        } else {
            image::imageops::resize(&rgb, new_w, new_h, FilterType::CatmullRom)
        };
        let x = (new_w - self.size) / 2;
        let y = (new_h - self.size) / 2;
        image::imageops::crop_imm(&resized, x, y, self.size, self.size).to_image()
    }

    /// Writes the normalised CHW tensor of `image` into `out`
    /// (`out.len() == self.tensor_len()`).
    pub fn write_tensor(&self, image: &RgbImage, out: &mut [f32]) {
        let plane = (self.size * self.size) as usize;
        debug_assert_eq!(out.len(), 3 * plane);
        debug_assert_eq!(image.dimensions(), (self.size, self.size));
        for (i, pixel) in image.pixels().enumerate() {
            for c in 0..3 {
                out[c * plane + i] = (f32::from(pixel[c]) / 255.0 - self.mean[c]) / self.std[c];
            }
        }
    }

    /// Decode, fit and normalise in one step.
    pub fn tensor_from_bytes(&self, bytes: &[u8], out: &mut [f32]) -> Result<(), String> {
        let image = self.decode(bytes)?;
        self.write_tensor(&self.fit(&image), out);
        Ok(())
    }
}

fn limits_for(max_pixels: u64) -> Limits {
    let mut limits = Limits::default();
    limits.max_alloc = Some(max_pixels.saturating_mul(8).max(1 << 20));
    limits
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{GrayImage, ImageFormat, Luma};

    fn png_gray(w: u32, h: u32) -> Vec<u8> {
        let img = GrayImage::from_fn(w, h, |x, y| Luma([((x * 7 + y * 3) % 256) as u8]));
        let mut out = Cursor::new(Vec::new());
        img.write_to(&mut out, ImageFormat::Png).unwrap();
        out.into_inner()
    }

    fn pre(size: u32) -> Preprocessor {
        let config = EmbedderConfig {
            image_size: size,
            mean: [0.485, 0.456, 0.406],
            std: [0.229, 0.224, 0.225],
            ..EmbedderConfig::default()
        };
        Preprocessor::new(&config, 10_000)
    }

    #[test]
    fn grayscale_becomes_normalised_rgb_of_the_configured_size() {
        let p = pre(32);
        let mut out = vec![0f32; p.tensor_len()];
        p.tensor_from_bytes(&png_gray(28, 28), &mut out).unwrap();
        let plane = 32 * 32;
        // The three channels come from the same gray value, normalised per channel.
        for i in [0, 100, 1000] {
            let gray0 = out[i] * 0.229 + 0.485;
            let gray1 = out[plane + i] * 0.224 + 0.456;
            let gray2 = out[2 * plane + i] * 0.225 + 0.406;
            assert!((gray0 - gray1).abs() < 1e-5 && (gray1 - gray2).abs() < 1e-5);
            assert!((0.0..=1.0).contains(&gray0));
        }
    }

    #[test]
    fn keeps_aspect_and_centre_crops() {
        let p = pre(16);
        let fitted = p.fit(&DynamicImage::ImageLuma8(GrayImage::new(64, 32)));
        assert_eq!(fitted.dimensions(), (16, 16));
    }

    #[test]
    fn refuses_bad_images() {
        let p = pre(16);
        assert!(p.decode(&[]).unwrap_err().contains("empty"));
        assert!(p.decode(b"definitely not an image").is_err());
        let mut truncated = png_gray(28, 28);
        truncated.truncate(truncated.len() / 2);
        assert!(p.decode(&truncated).is_err());
        assert!(
            p.decode(&png_gray(200, 100))
                .unwrap_err()
                .contains("over the limit")
        );
    }
}
