//! Image folders: `ROOT/<class>/<image>.{png,jpg,jpeg}`, class = folder name (sorted).

use super::InMemoryDataset;
use crate::augment::Image;
use crate::error::{Error, Result};
use rayon::prelude::*;
use std::path::{Path, PathBuf};

fn is_image(p: &Path) -> bool {
    p.extension()
        .and_then(|e| e.to_str())
        .map(|e| matches!(e.to_ascii_lowercase().as_str(), "png" | "jpg" | "jpeg"))
        .unwrap_or(false)
}

fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>> {
    let rd = std::fs::read_dir(dir).map_err(|e| Error::data(dir, e.to_string()))?;
    let mut v: Vec<PathBuf> = rd
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect::<Vec<_>>();
    v.sort();
    Ok(v)
}

/// Decodes one image file to RGB.
pub(crate) fn decode_rgb(path: &Path) -> Result<Image> {
    let img = image::open(path).map_err(|e| Error::data(path, format!("cannot decode: {e}")))?;
    let rgb = img.to_rgb8();
    let (w, h) = rgb.dimensions();
    Ok(Image {
        width: w as usize,
        height: h as usize,
        channels: 3,
        pixels: rgb.into_raw(),
    })
}

/// Reads every PNG/JPEG under `root/<class>/`. All images must share one size (resize them
/// beforehand); an empty folder, an undecodable file or a size mismatch is an error naming the
/// file.
pub fn read_image_folder(root: &Path, name: &str) -> Result<InMemoryDataset> {
    let classes: Vec<PathBuf> = sorted_entries(root)?
        .into_iter()
        .filter(|p| p.is_dir())
        .collect();
    if classes.is_empty() {
        return Err(Error::data(
            root,
            "no class folders (expected ROOT/<class>/<image>.png|jpg)",
        ));
    }
    let mut files = Vec::new();
    for (label, dir) in classes.iter().enumerate() {
        for f in sorted_entries(dir)?.into_iter().filter(|p| is_image(p)) {
            files.push((f, label));
        }
    }
    if files.is_empty() {
        return Err(Error::data(
            root,
            "no PNG or JPEG images in the class folders",
        ));
    }
    let images: Vec<Image> = files
        .par_iter()
        .map(|(f, _)| decode_rgb(f))
        .collect::<Result<_>>()?;
    let (w, h) = (images[0].width, images[0].height);
    if let Some((i, img)) = images
        .iter()
        .enumerate()
        .find(|(_, im)| im.width != w || im.height != h)
    {
        return Err(Error::data(
            &files[i].0,
            format!(
                "image is {}x{} but {} is {w}x{h}: all images of a folder dataset must share one size",
                img.width,
                img.height,
                files[0].0.display()
            ),
        ));
    }
    Ok(InMemoryDataset {
        name: format!("{name} ({} images)", images.len()),
        labels: files.iter().map(|(_, l)| *l).collect(),
        images,
        masks: None,
        class_names: classes
            .iter()
            .map(|c| {
                c.file_name()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_default()
            })
            .collect(),
    })
}
