//! Augmentation geometry and colour operations.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use sslab::augment::*;

/// A 64×48 image whose colour encodes its coordinates: R = 3x, G = 5y, B = 128.
fn coord_image() -> Image {
    let (w, h) = (64usize, 48usize);
    let mut px = Vec::with_capacity(w * h * 3);
    for y in 0..h {
        for x in 0..w {
            px.extend([(3 * x) as u8, (5 * y) as u8, 128]);
        }
    }
    Image::new(w, h, 3, px).unwrap()
}

/// Decodes source coordinates from a view pixel of `coord_image` (no colour ops applied).
fn decode(v: &View, size: usize, u: usize, vv: usize) -> (f32, f32) {
    let n = size * size;
    let r = v.chw[vv * size + u] * 255.0;
    let g = v.chw[n + vv * size + u] * 255.0;
    (r / 3.0, g / 5.0)
}

fn geometry_only(size: usize) -> ViewAug {
    let mut a = TwoViewRecipe::named("byol", size, Some(0.05)).unwrap().a;
    a.jitter_p = 0.0;
    a.gray_p = 0.0;
    a.blur_p = 0.0;
    a.solarize_p = 0.0;
    a.mean = [0.0; 3];
    a.std = [1.0; 3];
    a
}

#[test]
fn view_pixels_map_to_their_source_pixels_and_across_views() {
    let img = coord_image();
    let size = 32;
    let aug = geometry_only(size);
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let mut flips = [0usize; 2];
    let mut checked_pairs = 0;
    for _ in 0..40 {
        let va = aug.apply(&img, &mut rng);
        let vb = aug.apply(&img, &mut rng);
        flips[va.crop.flipped as usize] += 1;
        for v in [&va, &vb] {
            // Interior pixels: bilinear resampling of a linear ramp reproduces it exactly.
            for &(u, w) in &[(8usize, 8usize), (20, 12), (16, 24), (24, 20)] {
                let (sx, sy) = v.crop.view_to_source(u as f32, w as f32);
                let (dx, dy) = decode(v, size, u, w);
                let tol = 0.35 + 0.6 * (v.crop.w as f32 / size as f32).max(1.0);
                assert!(
                    (sx - dx).abs() < tol && (sy - dy).abs() < tol,
                    "view ({u},{w}) -> ({sx},{sy}) but pixel says ({dx},{dy}), crop {:?}",
                    v.crop
                );
                let (bu, bv) = v.crop.source_to_view(sx, sy);
                assert!(
                    (bu - u as f32).abs() < 1e-3 && (bv - w as f32).abs() < 1e-3,
                    "inverse map"
                );
            }
        }
        // A point of view A lands on the matching pixel of view B.
        for &(u, w) in &[(10usize, 10usize), (16, 16), (22, 9)] {
            let (sx, sy) = va.crop.view_to_source(u as f32, w as f32);
            let (bu, bv) = vb.crop.source_to_view(sx, sy);
            if bu < 3.0 || bv < 3.0 || bu > size as f32 - 4.0 || bv > size as f32 - 4.0 {
                continue;
            }
            let (ru, rv) = (bu.round() as usize, bv.round() as usize);
            let (ex, ey) = vb.crop.view_to_source(ru as f32, rv as f32);
            let (dx, dy) = decode(&vb, size, ru, rv);
            assert!((ex - dx).abs() < 1.5 && (ey - dy).abs() < 1.5);
            // And that pixel of B shows (nearly) the source point chosen in A.
            let step = (vb.crop.w as f32 / size as f32).max(1.0);
            assert!(
                (dx - sx).abs() <= step && (dy - sy).abs() <= step,
                "A→B mismatch"
            );
            checked_pairs += 1;
        }
    }
    assert!(
        flips[0] > 5 && flips[1] > 5,
        "flip never/always applied: {flips:?}"
    );
    assert!(checked_pairs > 10);
}

#[test]
fn crop_box_sampling_follows_torchvision() {
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    for _ in 0..500 {
        let (x, y, w, h) =
            random_resized_crop_box(&mut rng, 100, 60, (0.08, 1.0), (0.75, 4.0 / 3.0));
        assert!(x + w <= 100 && y + h <= 60 && w > 0 && h > 0);
    }
    // Impossible constraints fall back to a centre crop clamped to the ratio range.
    let (x, y, w, h) = random_resized_crop_box(&mut rng, 100, 10, (0.99, 1.0), (0.75, 4.0 / 3.0));
    assert_eq!((w, h), (13, 10));
    assert_eq!((x, y), ((100 - 13) / 2, 0));
}

#[test]
fn colour_ops_follow_torchvision_formulas() {
    let mut f = FloatImage {
        width: 2,
        height: 1,
        data: vec![0.2, 0.4, 0.6, 0.9, 0.1, 0.5],
    };
    adjust_brightness(&mut f, 1.5);
    assert!((f.data[0] - 0.3).abs() < 1e-6 && (f.data[3] - 1.0).abs() < 1e-6);
    let mut g = FloatImage {
        width: 1,
        height: 1,
        data: vec![0.2, 0.4, 0.6],
    };
    grayscale(&mut g);
    let l = 0.299 * 0.2 + 0.587 * 0.4 + 0.114 * 0.6;
    assert!(g.data.iter().all(|v| (v - l).abs() < 1e-6));
    let mut s = FloatImage {
        width: 1,
        height: 1,
        data: vec![0.2, 0.4, 0.6],
    };
    adjust_saturation(&mut s, 0.0);
    assert!(s.data.iter().all(|v| (v - l).abs() < 1e-6));
    let mut h = FloatImage {
        width: 1,
        height: 1,
        data: vec![1.0, 0.0, 0.0],
    };
    adjust_hue(&mut h, 1.0 / 3.0);
    assert!(
        (h.data[1] - 1.0).abs() < 1e-5 && h.data[0].abs() < 1e-5,
        "red + 1/3 turn = green: {:?}",
        h.data
    );
    let mut z = FloatImage {
        width: 1,
        height: 1,
        data: vec![0.1, 0.6, 0.5],
    };
    solarize(&mut z);
    assert!(
        (z.data[0] - 0.1).abs() < 1e-6
            && (z.data[1] - 0.4).abs() < 1e-6
            && (z.data[2] - 0.5).abs() < 1e-6
    );
    let mut c = FloatImage {
        width: 2,
        height: 1,
        data: vec![0.0, 0.0, 0.0, 1.0, 1.0, 1.0],
    };
    adjust_contrast(&mut c, 0.0);
    assert!(c.data.iter().all(|v| (v - 0.5).abs() < 1e-6));
}

#[test]
fn blur_preserves_constant_images_and_mean() {
    let mut f = FloatImage {
        width: 8,
        height: 8,
        data: vec![0.3; 8 * 8 * 3],
    };
    gaussian_blur(&mut f, 1.5);
    assert!(f.data.iter().all(|v| (v - 0.3).abs() < 1e-5));
    let mut spike = FloatImage {
        width: 15,
        height: 15,
        data: vec![0.0; 15 * 15 * 3],
    };
    spike.data[(7 * 15 + 7) * 3] = 1.0;
    gaussian_blur(&mut spike, 1.0);
    let total: f32 = spike.data.iter().step_by(3).sum();
    assert!((total - 1.0).abs() < 1e-4);
    assert!(spike.rgb(7, 7)[0] < 0.2 && spike.rgb(8, 7)[0] > 0.05);
}

#[test]
fn recipes_match_methods_md() {
    let bt = TwoViewRecipe::named("barlow-twins", 224, None).unwrap();
    assert_eq!(bt.a.interpolation, Interpolation::Bicubic);
    assert_eq!(
        (bt.a.blur_p, bt.b.blur_p, bt.a.solarize_p, bt.b.solarize_p),
        (1.0, 0.1, 0.0, 0.2)
    );
    assert_eq!(bt.a.jitter.saturation, 0.2);
    assert_eq!(bt.a.scale, (0.08, 1.0));
    let v2 = TwoViewRecipe::named("moco-v2", 224, None).unwrap();
    assert_eq!(
        (v2.a.scale.0, v2.a.blur_p, v2.a.jitter_p, v2.a.jitter.hue),
        (0.2, 0.5, 0.8, 0.1)
    );
    let v1 = TwoViewRecipe::named("moco-v1", 224, None).unwrap();
    assert!(v1.a.gray_before_jitter && v1.a.jitter_p == 1.0 && v1.a.jitter.hue == 0.4);
    let c = TwoViewRecipe::named("byol-cifar", 32, None).unwrap();
    assert_eq!((c.a.blur_p, c.b.blur_p, c.b.solarize_p), (0.0, 0.0, 0.2));
    assert!(TwoViewRecipe::named("nope", 32, None).is_none());
}
