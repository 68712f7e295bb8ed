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

/// Writes every image of `data` as `root/<class name>/<index>.png` (index over the whole
/// dataset, five digits or more), the layout [`read_image_folder`], torchvision's
/// `ImageFolder` and lightly's datasets read. Returns the number of images written. Files
/// already there are overwritten; an unwritable file is an error naming it.
///
/// ```no_run
/// use sslab::data::{write_image_folder, DataSource};
/// use sslab::train::RunConfig;
/// let shapes = RunConfig::preset("barlow-twins/tiny")?.data.shapes;
/// let (train, _test) = DataSource::parse("shapes", shapes)?.load()?;
/// write_image_folder(train.as_ref(), std::path::Path::new("shapes/train"))?;
/// # Ok::<(), sslab::Error>(())
/// ```
pub fn write_image_folder(data: &dyn super::Dataset, root: &Path) -> Result<usize> {
    let names = data.class_names();
    for name in names {
        if name.is_empty() || name.contains(['/', '\\']) || name == "." || name == ".." {
            return Err(Error::data(
                root,
                format!("class name {name:?} is not a folder name"),
            ));
        }
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).map_err(|e| Error::data(&dir, e.to_string()))?;
    }
    (0..data.len()).into_par_iter().try_for_each(|i| {
        let img = data.image(i);
        let path = root.join(&names[data.label(i)]).join(format!("{i:05}.png"));
        let color = if img.channels == 1 {
            image::ExtendedColorType::L8
        } else {
            image::ExtendedColorType::Rgb8
        };
        image::save_buffer(
            &path,
            &img.pixels,
            img.width as u32,
            img.height as u32,
            color,
        )
        .map_err(|e| Error::data(&path, e.to_string()))
    })?;
    Ok(data.len())
}
