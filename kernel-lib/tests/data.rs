//! Readers round-trip generated files; each bad file errors naming the file; the built-in
//! dataset and the loader are deterministic.

use flate2::write::GzEncoder;
use sslab::augment::TwoViewRecipe;
use sslab::data::*;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;

fn cifar_record(label: u8, seed: u8) -> Vec<u8> {
    let mut r = vec![label];
    r.extend((0..3072).map(|i| (i as u32 * 7 + seed as u32) as u8));
    r
}

fn assert_names(err: sslab::Error, path: &Path) {
    let msg = err.to_string();
    assert!(
        msg.contains(&path.display().to_string()),
        "error does not name {}: {msg}",
        path.display()
    );
}

#[test]
fn cifar10_round_trip_and_bad_files() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("data_batch_1.bin");
    let mut bytes = cifar_record(3, 1);
    bytes.extend(cifar_record(9, 2));
    std::fs::write(&f, &bytes).unwrap();
    let d = read_cifar10_bin(&[f.as_path()], "t").unwrap();
    assert_eq!(d.len(), 2);
    assert_eq!((d.label(0), d.label(1)), (3, 9));
    let img = d.image(0);
    // Planar R plane first: pixel 5's R is byte 1+5, G is 1+1024+5.
    assert_eq!(
        img.rgb(5, 0),
        [bytes[1 + 5], bytes[1 + 1024 + 5], bytes[1 + 2048 + 5]]
    );
    // Truncated.
    std::fs::write(&f, &bytes[..5000]).unwrap();
    assert_names(read_cifar10_bin(&[f.as_path()], "t").unwrap_err(), &f);
    // Label out of range (not CIFAR-10).
    std::fs::write(&f, cifar_record(42, 0)).unwrap();
    assert_names(read_cifar10_bin(&[f.as_path()], "t").unwrap_err(), &f);
    // Missing.
    let missing = dir.path().join("nope.bin");
    assert_names(
        read_cifar10_bin(&[missing.as_path()], "t").unwrap_err(),
        &missing,
    );
    // CIFAR-100: two label bytes, the fine one is used.
    let f100 = dir.path().join("train.bin");
    let mut r = vec![1u8, 77];
    r.extend(vec![0u8; 3072]);
    std::fs::write(&f100, &r).unwrap();
    assert_eq!(
        read_cifar100_bin(&[f100.as_path()], "t").unwrap().label(0),
        77
    );
}

fn write_idx(path: &Path, magic: u32, dims: &[u32], body: &[u8], gz: bool) {
    let mut raw = magic.to_be_bytes().to_vec();
    for d in dims {
        raw.extend(d.to_be_bytes());
    }
    raw.extend(body);
    if gz {
        let mut e = GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(&raw).unwrap();
        std::fs::write(path, e.finish().unwrap()).unwrap();
    } else {
        std::fs::write(path, raw).unwrap();
    }
}

#[test]
fn idx_round_trip_and_bad_files() {
    let dir = tempfile::tempdir().unwrap();
    let body: Vec<u8> = (0..3 * 4 * 5).map(|i| i as u8).collect();
    for prefix in ["train", "t10k"] {
        write_idx(
            &dir.path().join(format!("{prefix}-images-idx3-ubyte.gz")),
            0x803,
            &[3, 4, 5],
            &body,
            true,
        );
        write_idx(
            &dir.path().join(format!("{prefix}-labels-idx1-ubyte")),
            0x801,
            &[3],
            &[1, 2, 9],
            false,
        );
    }
    let (train, test) = DataSource::FashionMnist(dir.path().to_path_buf())
        .load()
        .unwrap();
    assert_eq!((train.len(), test.len()), (3, 3));
    let img = train.image(1);
    assert_eq!((img.width, img.height, img.channels), (5, 4, 1));
    assert_eq!(img.pixels[0], 20);
    assert_eq!(train.label(2), 9);
    // Wrong magic.
    let bad = dir.path().join("bad-images");
    write_idx(&bad, 0x801, &[3, 4, 5], &body, false);
    assert_names(read_idx_images(&bad).unwrap_err(), &bad);
    // Truncated body.
    write_idx(&bad, 0x803, &[3, 4, 5], &body[..30], true);
    let e = read_idx_images(&bad).unwrap_err();
    assert!(e.to_string().contains("truncated"));
    assert_names(e, &bad);
    // Corrupt gzip.
    std::fs::write(&bad, [0x1f, 0x8b, 8, 0, 1, 2, 3]).unwrap();
    assert_names(read_idx_images(&bad).unwrap_err(), &bad);
    // Missing labels file.
    std::fs::remove_file(dir.path().join("t10k-labels-idx1-ubyte")).unwrap();
    let e = DataSource::Mnist(dir.path().to_path_buf())
        .load()
        .err()
        .unwrap();
    assert!(e.to_string().contains("t10k-labels-idx1-ubyte"), "{e}");
}

fn write_png(path: &Path, w: u32, h: u32, v: u8) {
    let img = image::RgbImage::from_pixel(w, h, image::Rgb([v, 255 - v, 7]));
    img.save(path).unwrap();
}

#[test]
fn image_folder_round_trip_and_bad_folders() {
    let dir = tempfile::tempdir().unwrap();
    for split in ["train", "test"] {
        for (c, v) in [("cat", 10u8), ("dog", 200u8)] {
            let d = dir.path().join(split).join(c);
            std::fs::create_dir_all(&d).unwrap();
            write_png(&d.join("a.png"), 6, 4, v);
            write_png(&d.join("b.png"), 6, 4, v);
        }
    }
    let (train, _test) = DataSource::Folder(dir.path().to_path_buf()).load().unwrap();
    assert_eq!(train.len(), 4);
    assert_eq!(train.class_names(), &["cat".to_string(), "dog".to_string()]);
    assert_eq!(train.label(3), 1);
    assert_eq!(train.image(3).rgb(0, 0), [200, 55, 7]);
    // Mixed sizes: the odd file is named.
    let odd = dir.path().join("train/dog/c.png");
    write_png(&odd, 5, 5, 1);
    assert_names(
        read_image_folder(&dir.path().join("train"), "t").unwrap_err(),
        &odd,
    );
    // Undecodable file.
    std::fs::write(&odd, b"not a png").unwrap();
    assert_names(
        read_image_folder(&dir.path().join("train"), "t").unwrap_err(),
        &odd,
    );
    // Empty folder.
    let empty = dir.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    assert_names(read_image_folder(&empty, "t").unwrap_err(), &empty);
    std::fs::create_dir_all(empty.join("cls")).unwrap();
    assert_names(read_image_folder(&empty, "t").unwrap_err(), &empty);
}

#[test]
fn data_specs_parse_or_explain() {
    let s = ShapesConfig::default();
    assert_eq!(
        DataSource::parse("shapes", s).unwrap(),
        DataSource::Shapes(s)
    );
    assert!(matches!(
        DataSource::parse("cifar10:/x", s).unwrap(),
        DataSource::Cifar10(_)
    ));
    let e = DataSource::parse("imagenet:/x", s).unwrap_err().to_string();
    assert!(e.contains("data.source") && e.contains("imagenet"), "{e}");
    let e = DataSource::Cifar10("/definitely/missing".into())
        .load()
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("/definitely/missing"), "{e}");
}

#[test]
fn shapes_are_deterministic_balanced_and_masked() {
    let cfg = ShapesConfig {
        size: 32,
        train: 40,
        test: 20,
        seed: 5,
    };
    let a = Shapes::split(&cfg, 0, 40);
    let b = Shapes::split(&cfg, 0, 40);
    let t = Shapes::split(&cfg, 1, 20);
    assert_eq!(a.images, b.images);
    assert_ne!(a.images[0], t.images[0], "train and test must differ");
    assert_eq!(a.num_classes(), 10);
    for c in 0..10 {
        assert_eq!(a.labels.iter().filter(|&&l| l == c).count(), 4);
    }
    for i in 0..a.len() {
        let m = a.mask(i).unwrap();
        assert_eq!(m.len(), 32 * 32);
        let fg = m.iter().filter(|&&v| v == a.label(i) as u8 + 1).count();
        assert!(
            fg > 20,
            "image {i} ({}) has only {fg} shape pixels",
            SHAPE_NAMES[a.label(i)]
        );
        assert!(m.iter().all(|&v| v == 0 || v == a.label(i) as u8 + 1));
    }
    // Every shape stands out from its background in luma (outline visible under grayscale).
    for i in 0..a.len() {
        let (m, img) = (a.mask(i).unwrap(), a.image(i));
        let (mut s, mut n) = ([0f32; 2], [0f32; 2]);
        for (p, &v) in m.iter().enumerate() {
            let px = &img.pixels[p * 3..p * 3 + 3];
            let l = 0.299 * px[0] as f32 + 0.587 * px[1] as f32 + 0.114 * px[2] as f32;
            s[usize::from(v > 0)] += l;
            n[usize::from(v > 0)] += 1.0;
        }
        let diff = (s[1] / n[1] - s[0] / n[0]).abs() / 255.0;
        assert!(
            diff > 0.2,
            "image {i}: shape and background luma differ by only {diff:.2}"
        );
    }
    // Colour does not give the class away: the mean shape colour spreads over every class.
    let a = Shapes::split(&cfg, 0, 300);
    let mut means = vec![Vec::new(); 10];
    for i in 0..a.len() {
        let m = a.mask(i).unwrap();
        let img = a.image(i);
        let (mut s, mut n) = (0f32, 0f32);
        for (p, &v) in m.iter().enumerate() {
            if v > 0 {
                s += img.pixels[p * 3] as f32;
                n += 1.0;
            }
        }
        means[a.label(i)].push(s / n);
    }
    let spread = means
        .iter()
        .map(|v| v.iter().cloned().fold(0f32, f32::max) - v.iter().cloned().fold(255f32, f32::min));
    assert!(
        spread.clone().all(|s| s > 40.0),
        "red channel of shapes barely varies within a class"
    );
}

#[test]
fn loader_is_deterministic_and_restartable() {
    let cfg = ShapesConfig {
        size: 16,
        train: 30,
        test: 10,
        seed: 1,
    };
    let data: Arc<dyn Dataset> = Arc::new(Shapes::split(&cfg, 0, 30));
    let recipe = TwoViewRecipe::named("byol-cifar", 16, None).unwrap();
    let mut l1 = Loader::new(data.clone(), recipe.clone(), 8, 42, 0).unwrap();
    let batches: Vec<Batch> = (0..5).map(|_| l1.next_batch().unwrap()).collect();
    assert_eq!(l1.steps_per_epoch(), 3);
    // Each epoch visits distinct samples (drop_last: 24 of 30).
    let mut seen: Vec<usize> = batches[..3]
        .iter()
        .flat_map(|b| b.indices.clone())
        .collect();
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 24);
    assert_ne!(batches[0].a, batches[0].b, "two views must differ");
    let mut l2 = Loader::new(data.clone(), recipe.clone(), 8, 42, 3).unwrap();
    let b3 = l2.next_batch().unwrap();
    assert_eq!(b3.indices, batches[3].indices);
    assert_eq!(b3.a, batches[3].a);
    assert_eq!(b3.crops_b, batches[3].crops_b);
    let mut l3 = Loader::new(data.clone(), recipe.clone(), 8, 43, 0).unwrap();
    assert_ne!(l3.next_batch().unwrap().a, batches[0].a);
    assert!(Loader::new(data, recipe, 31, 0, 0).is_err());
}

/// A rank's shard of a global batch is its consecutive slots of the whole batch: the same
/// images, views and crops (what makes N ranks train as one process), in every epoch; a batch
/// that does not divide among the ranks is refused.
#[test]
fn shards_of_a_global_batch_put_together_are_the_whole_batch() {
    use sslab::data::{make_batch, make_shard, Shard};
    let cfg = ShapesConfig {
        size: 16,
        train: 40,
        test: 10,
        seed: 2,
    };
    let data = Shapes::split(&cfg, 0, 40);
    let recipe = TwoViewRecipe::named("byol-cifar", 16, None).unwrap();
    for step in [0, 4, 7] {
        let whole = make_batch(&data, &recipe, 12, 5, step);
        let parts: Vec<Batch> = (0..3)
            .map(|rank| make_shard(&data, &recipe, 12, 5, step, Shard { rank, size: 3 }))
            .collect();
        let cat = |f: fn(&Batch) -> Vec<f32>| parts.iter().flat_map(f).collect::<Vec<f32>>();
        assert_eq!(cat(|b| b.a.clone()), whole.a, "step {step}");
        assert_eq!(cat(|b| b.b.clone()), whole.b, "step {step}");
        let idx: Vec<usize> = parts.iter().flat_map(|b| b.indices.clone()).collect();
        assert_eq!(idx, whole.indices);
        let crops: Vec<_> = parts.iter().flat_map(|b| b.crops_a.clone()).collect();
        assert_eq!(crops, whole.crops_a);
    }
    let data: Arc<dyn Dataset> = Arc::new(data);
    let shard = Shard { rank: 0, size: 5 };
    assert!(Loader::sharded(data, recipe, 12, 5, 0, shard).is_err());
}

/// The built-in shapes written as an image folder (what `sslab data export` does) read back
/// with the same pixels under the same class names.
#[test]
fn an_exported_image_folder_reads_back_the_same_images() {
    let cfg = ShapesConfig {
        train: 40,
        test: 10,
        ..ShapesConfig::default()
    };
    let (train, _) = DataSource::parse("shapes", cfg).unwrap().load().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("train");
    assert_eq!(write_image_folder(train.as_ref(), &root).unwrap(), 40);
    let back = read_image_folder(&root, "back").unwrap();
    assert_eq!(back.len(), 40);
    // The folder reader sorts by class, then by file: file NNNNN is original image NNNNN.
    let mut originals: Vec<usize> = (0..40).collect();
    originals.sort_by_key(|&i| (train.class_names()[train.label(i)].clone(), i));
    for (j, &i) in originals.iter().enumerate() {
        assert_eq!(back.image(j).pixels, train.image(i).pixels, "image {i}");
        assert_eq!(
            back.class_names()[back.label(j)],
            train.class_names()[train.label(i)]
        );
    }
}
