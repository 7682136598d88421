//! Thumbnails: the small JPEG an item added as an image keeps, so that the
//! decision page can show the neighbours that voted as the paper's figures
//! do. Made from the image already decoded for embedding.

use image::DynamicImage;
use image::codecs::jpeg::JpegEncoder;
use image::imageops::FilterType;

/// JPEG quality of thumbnails: small files, still recognisable.
const QUALITY: u8 = 80;

/// `image` scaled (never up) so that its longer side is at most `max_px`,
/// as a JPEG.
pub fn make(image: &DynamicImage, max_px: u32) -> Result<Vec<u8>, String> {
    let (w, h) = (image.width(), image.height());
    let longer = w.max(h).max(1);
    let rgb = if longer > max_px {
        let scale = max_px as f32 / longer as f32;
        let (tw, th) = (
            ((w as f32 * scale).round() as u32).max(1),
            ((h as f32 * scale).round() as u32).max(1),
        );
        image.resize_exact(tw, th, FilterType::Triangle).to_rgb8()
    } else {
        image.to_rgb8()
    };
    let mut out = Vec::new();
    JpegEncoder::new_with_quality(&mut out, QUALITY)
        .encode_image(&rgb)
        .map_err(|e| format!("cannot encode the thumbnail: {e}"))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fits_the_longer_side_and_decodes_back() {
        let image = DynamicImage::ImageRgb8(image::RgbImage::from_fn(300, 150, |x, y| {
            image::Rgb([(x % 256) as u8, (y % 256) as u8, 7])
        }));
        let jpeg = make(&image, 96).unwrap();
        let back = image::load_from_memory(&jpeg).unwrap();
        assert_eq!((back.width(), back.height()), (96, 48));
        // Never scaled up.
        let small = DynamicImage::ImageLuma8(image::GrayImage::new(28, 28));
        let back = image::load_from_memory(&make(&small, 96).unwrap()).unwrap();
        assert_eq!((back.width(), back.height()), (28, 28));
    }
}
