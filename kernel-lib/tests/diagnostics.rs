//! Diagnostics: spike detection, collapse monitors, cross-correlation statistics, dense
//! correspondence against crop geometry, figures, and the `Run` surface that draws them.

mod common;

use candle_core::{Device, Tensor, Var};
use common::shrink;
use ndarray::Array2;
use sslab::augment::CropBox;
use sslab::diagnostics::*;
use sslab::models::{ParamKind, ParamStore};
use sslab::plot::{diverging, Figure, Panel, RgbImage, Series};
use sslab::prelude::*;
use sslab::train::FeatureSource;

fn tracker_with(series: &[Vec<f32>]) -> GradSpikeTracker {
    let layers: Vec<String> = (0..series.len())
        .map(|i| format!("backbone.blocks.{i}"))
        .collect();
    let mut t = GradSpikeTracker::new(layers, 5.0, 20).unwrap();
    for s in 0..series[0].len() {
        let norms: Vec<f32> = series.iter().map(|v| v[s]).collect();
        t.record(s + 1, &norms, &norms).unwrap();
    }
    t
}

fn wobble(n: usize, phase: f32) -> Vec<f32> {
    (0..n)
        .map(|i| 1.0 + 0.3 * ((i as f32) * 0.37 + phase).sin())
        .collect()
}

#[test]
fn spike_detector_finds_injected_spikes_and_the_lag() {
    let (mut first, mut last) = (wobble(200, 0.0), wobble(200, 1.0));
    first[99] *= 20.0; // step 100
    last[102] *= 12.0; // step 103
    first[149] *= 8.0; // step 150, not followed
    let t = tracker_with(&[first, wobble(200, 2.0), last]);
    let spikes = t.spikes();
    let at: Vec<(usize, &str)> = spikes.iter().map(|s| (s.step, s.layer.as_str())).collect();
    assert_eq!(
        at,
        vec![
            (100, "backbone.blocks.0"),
            (103, "backbone.blocks.2"),
            (150, "backbone.blocks.0")
        ]
    );
    assert!(spikes[0].ratio > 15.0, "ratio {}", spikes[0].ratio);
    let leads = t.first_layer_leads();
    assert_eq!(leads[0].last_layer_lag, Some(3));
    assert_eq!(leads[1].last_layer_lag, None);
    // Relative magnitude reads ~1 off spikes.
    let rel = t.relative(1);
    assert!(rel[50..].iter().all(|r| (0.5..2.0).contains(r)));
}

#[test]
fn spike_detector_is_quiet_on_smooth_series() {
    // Smooth growth and decay by 10x over the run: no single step jumps 5x its median.
    let grow: Vec<f32> = (0..300).map(|i| (i as f32 / 130.0).exp()).collect();
    let decay: Vec<f32> = (0..300)
        .map(|i| 10.0 * (-(i as f32) / 130.0).exp())
        .collect();
    assert!(tracker_with(&[grow, decay, wobble(300, 0.5)])
        .spikes()
        .is_empty());
}

#[test]
fn tracker_rejects_bad_settings_and_shapes() {
    assert!(GradSpikeTracker::new(vec!["a".into()], 1.0, 20).is_err());
    assert!(GradSpikeTracker::new(vec!["a".into()], 5.0, 2).is_err());
    let mut t = GradSpikeTracker::new(vec!["a".into()], 5.0, 20).unwrap();
    assert!(t.record(1, &[1.0, 2.0], &[1.0]).is_err());
    assert!(t.figure(None).is_ok() || t.steps().is_empty());
}

#[test]
fn layer_names_group_blocks_heads_and_the_stem() {
    assert_eq!(
        layer_of("backbone.blocks.3.attn.qkv.weight"),
        "backbone.blocks.3"
    );
    assert_eq!(
        layer_of("backbone.layer2.1.conv1.weight"),
        "backbone.layer2.1"
    );
    assert_eq!(layer_of("backbone.conv1.weight"), "backbone.stem");
    assert_eq!(
        layer_of("backbone.patch_embed.proj.weight"),
        "backbone.patch_embed"
    );
    assert_eq!(layer_of("backbone.cls_token"), "backbone.patch_embed");
    assert_eq!(layer_of("momentum.projector.0.linear.weight"), "projector");
}

#[test]
fn grad_stats_match_a_host_computation() {
    let dev = Device::Cpu;
    let mk = |name: &str, v: Vec<f32>, kind| sslab::models::Param {
        name: name.into(),
        var: Var::from_tensor(&Tensor::new(v, &dev).unwrap()).unwrap(),
        kind,
    };
    let store = ParamStore {
        params: vec![
            mk("backbone.conv1.weight", vec![1.0, -2.0], ParamKind::Weight),
            mk("backbone.bn1.bias", vec![0.5], ParamKind::Bias),
            mk(
                "backbone.layer1.0.conv1.weight",
                vec![3.0, 1.0],
                ParamKind::Weight,
            ),
            mk("backbone.patch", vec![9.0], ParamKind::Frozen),
            mk("projector.0.linear.weight", vec![2.0], ParamKind::Weight),
        ],
    };
    let groups = LayerGroups::new(&store);
    assert_eq!(
        groups.names(),
        ["backbone.stem", "backbone.layer1.0", "projector"]
    );
    // loss = Σ c·p² → grad = 2 c p.
    let terms: Vec<Tensor> = store
        .params
        .iter()
        .enumerate()
        .map(|(i, p)| {
            (p.var.as_tensor().sqr().unwrap() * (i + 1) as f64)
                .unwrap()
                .sum_all()
                .unwrap()
        })
        .collect();
    let loss = Tensor::stack(&terms, 0).unwrap().sum_all().unwrap();
    let grads = loss.backward().unwrap();
    let (norms, max_abs) = groups.grad_stats(&store, &grads).unwrap();
    // stem: grads 2·1·[1,-2] = [2,-4] and 2·2·0.5 = 2 → norm √24, max 4.
    assert!((norms[0] - 24f32.sqrt()).abs() < 1e-5 && (max_abs[0] - 4.0).abs() < 1e-6);
    // layer1: 2·3·[3,1] = [18, 6].
    assert!((norms[1] - (324f32 + 36.0).sqrt()).abs() < 1e-4);
    assert!((max_abs[1] - 18.0).abs() < 1e-6);
    // projector: 2·5·2 = 20.
    assert!((norms[2] - 20.0).abs() < 1e-5 && (max_abs[2] - 20.0).abs() < 1e-6);
}

#[test]
fn grad_stats_of_large_gradients_sum_every_chunk_and_show_a_nan() {
    // Gradients long enough to be cut into several parallel chunks: the norm and the largest
    // value must cover all of them, wherever the largest value lies.
    let dev = Device::Cpu;
    let len = 100_003;
    let w: Vec<f32> = (0..len).map(|i| ((i % 97) as f32 - 48.0) / 16.0).collect();
    let mk = |name: &str, v: Vec<f32>| sslab::models::Param {
        name: name.into(),
        var: Var::from_tensor(&Tensor::new(v, &dev).unwrap()).unwrap(),
        kind: ParamKind::Weight,
    };
    let store = ParamStore {
        params: vec![mk("backbone.conv1.weight", w.clone())],
    };
    let groups = LayerGroups::new(&store);
    // loss = Σ p²/2 → grad = p, plus 7 at the very last element.
    let p = store.params[0].var.as_tensor();
    let bump = Tensor::from_vec(
        (0..len)
            .map(|i| if i == len - 1 { 7f32 } else { 0.0 })
            .collect(),
        len,
        &dev,
    )
    .unwrap();
    let loss = ((p.sqr().unwrap() * 0.5).unwrap().sum_all().unwrap()
        + (p * &bump).unwrap().sum_all().unwrap())
    .unwrap();
    let grads = loss.backward().unwrap();
    let (norms, max_abs) = groups.grad_stats(&store, &grads).unwrap();
    let g: Vec<f64> = (0..len)
        .map(|i| w[i] as f64 + if i == len - 1 { 7.0 } else { 0.0 })
        .collect();
    let want_norm = g.iter().map(|v| v * v).sum::<f64>().sqrt();
    let want_max = g.iter().fold(0f64, |m, v| m.max(v.abs()));
    assert!(((norms[0] as f64) - want_norm).abs() < 1e-4 * want_norm);
    assert_eq!(max_abs[0] as f64, want_max);
    // A NaN in any chunk makes the layer's statistics NaN (the run refuses such a step).
    let nan_loss = (loss + (p.get(len / 2).unwrap() * f64::NAN).unwrap()).unwrap();
    let (norms, max_abs) = groups
        .grad_stats(&store, &nan_loss.backward().unwrap())
        .unwrap();
    assert!(norms[0].is_nan() && max_abs[0].is_nan());
}

fn tensor(rows: &[Vec<f64>]) -> Tensor {
    let d = rows[0].len();
    let flat: Vec<f32> = rows.iter().flatten().map(|&v| v as f32).collect();
    Tensor::from_vec(flat, (rows.len(), d), &Device::Cpu).unwrap()
}

/// RankMe as its paper writes it, from given singular values: `exp(−Σ pₖ ln pₖ)`,
/// `pₖ = σₖ / Σσ + 1e-7` (written out here, independent of the library's code).
fn rankme_from(sv: &[f64]) -> f64 {
    let total: f64 = sv.iter().sum();
    let h: f64 = sv
        .iter()
        .map(|s| s / total + 1e-7)
        .map(|p| -p * p.ln())
        .sum();
    h.exp()
}

#[test]
fn effective_rank_of_known_rank_matrices() {
    assert_eq!(RANKME_EPSILON, 1e-7);
    // Rank 3 with equal singular values (√4 each) in a 12 × 8 matrix: 5 zero singular values,
    // each adding −ε ln ε to the entropy, so RankMe is 3.000 02…, not 3.
    let mut z = Array2::<f64>::zeros((12, 8));
    for i in 0..12 {
        z[[i, i % 3]] = 1.0;
    }
    let want = rankme_from(&[2.0, 2.0, 2.0, 0.0, 0.0, 0.0, 0.0, 0.0]);
    assert!(want - 3.0 > 1e-5, "the ε terms are visible: {want}");
    let got = effective_rank(&z);
    assert!((got - want).abs() < 1e-10, "{got} vs {want}");
    // Rank deficient and not axis-aligned: diag(3, 2, 1, 0.5, 0, 0, 0, 0) times the 8 × 8
    // Hadamard matrix over √8 (orthogonal), so its singular values are those eight numbers.
    let mut h = Array2::<f64>::ones((8, 8));
    for i in 0..8usize {
        for j in 0..8usize {
            if (i & j).count_ones() % 2 == 1 {
                h[[i, j]] = -1.0;
            }
        }
    }
    let d = [3.0, 2.0, 1.0, 0.5, 0.0, 0.0, 0.0, 0.0];
    let z = Array2::from_shape_fn((8, 8), |(i, j)| d[i] * h[[i, j]] / 8f64.sqrt());
    let want = rankme_from(&d);
    let got = effective_rank(&z);
    assert!((got - want).abs() < 1e-9, "{got} vs {want}");
    // Without ε the value would differ by more than the tolerance: the test can fail.
    let no_eps = {
        let p = d.iter().map(|s| s / 6.5).filter(|&p| p > 0.0);
        (-p.map(|p| p * p.ln()).sum::<f64>()).exp()
    };
    assert!((got - no_eps).abs() > 1e-6, "{got} vs {no_eps}");
    // Eigenvalues of a symmetric matrix with a known spectrum.
    let a = ndarray::array![[2.0, 1.0, 0.0], [1.0, 2.0, 0.0], [0.0, 0.0, 5.0]];
    let mut ev = symmetric_eigenvalues(a);
    ev.sort_by(f64::total_cmp);
    for (got, want) in ev.iter().zip([1.0, 3.0, 5.0]) {
        assert!((got - want).abs() < 1e-9, "{ev:?}");
    }
    // Singular values of [[3, 0], [0, 4], [0, 0]] are 4 and 3.
    let mut sv = singular_values(&ndarray::array![[3.0, 0.0], [0.0, 4.0], [0.0, 0.0]]);
    sv.sort_by(f64::total_cmp);
    assert!((sv[0] - 3.0).abs() < 1e-9 && (sv[1] - 4.0).abs() < 1e-9);
}

#[test]
fn collapse_monitors_tell_collapsed_from_isotropic() {
    // Collapsed: every row the same vector.
    let same: Vec<Vec<f64>> = (0..16).map(|_| vec![1.0, 2.0, 3.0, 4.0]).collect();
    let c = collapse_stats(7, &tensor(&same), &tensor(&same)).unwrap();
    assert_eq!(c.step, 7);
    assert!(c.embed_std < 1e-6 && c.alignment < 1e-9);
    assert!(
        c.uniformity.abs() < 1e-9,
        "all pairs coincide: log E exp(0) = 0"
    );
    // Rank 1 of width 4: 1 plus the ε terms of three zero singular values.
    assert!((c.effective_rank - 1.0).abs() < 1e-5);
    // Isotropic: ±e_i, the 2d points of the cross-polytope, d = 4.
    let mut iso = Vec::new();
    for i in 0..4 {
        for s in [1.0, -1.0] {
            let mut v = vec![0.0; 4];
            v[i] = s;
            iso.push(v);
        }
    }
    let c = collapse_stats(0, &tensor(&iso), &tensor(&iso)).unwrap();
    // Each coordinate is ±1 on 2 of 8 rows: std = sqrt(2/8) = 1/2 = 1/√d.
    assert!((c.embed_std - 0.5).abs() < 1e-6 && (c.ideal_std - 0.5).abs() < 1e-12);
    assert!((c.effective_rank - 4.0).abs() < 1e-5);
    // Pairs: 4 antipodal (‖·‖² = 4), 24 orthogonal (‖·‖² = 2) → log((4e⁻⁸ + 24e⁻⁴)/28).
    let want = ((4.0 * (-8f64).exp() + 24.0 * (-4f64).exp()) / 28.0).ln();
    assert!(
        (c.uniformity - want).abs() < 1e-9,
        "{} vs {want}",
        c.uniformity
    );
    // Alignment: positives e_i vs -e_i → ‖·‖² = 4 for every row.
    let flipped: Vec<Vec<f64>> = iso.iter().map(|v| v.iter().map(|x| -x).collect()).collect();
    let c = collapse_stats(0, &tensor(&iso), &tensor(&flipped)).unwrap();
    assert!((c.alignment - 4.0).abs() < 1e-9);
    assert!(collapse_stats(0, &tensor(&iso), &tensor(&same)).is_err());
}

#[test]
fn correlation_stats_match_the_definition() {
    let c = Tensor::new(
        &[[1.0f32, 0.2, -0.05], [0.3, 0.5, 0.0], [-0.5, 0.05, 0.9]],
        &Device::Cpu,
    )
    .unwrap();
    let s = correlation_stats(&c).unwrap();
    assert!((s.mean_diag - 0.8).abs() < 1e-6);
    assert!((s.mean_abs_off - (0.2 + 0.05 + 0.3 + 0.0 + 0.5 + 0.05) / 6.0).abs() < 1e-6);
    assert!((s.frac_off_above_0_1 - 3.0 / 6.0).abs() < 1e-6);
    assert!((s.on_diag_loss - (0.0 + 0.25 + 0.01)).abs() < 1e-6);
    let off = 0.04 + 0.0025 + 0.09 + 0.25 + 0.0025;
    assert!((s.off_diag_loss - off).abs() < 1e-6);
    // Identical standardised views give C ≈ I.
    let z = Tensor::randn(0f32, 1., (256, 8), &Device::Cpu).unwrap();
    let snap = CorrelationSnapshot::top_left(3, &cross_correlation(&z, &z).unwrap(), 4).unwrap();
    assert!((snap.stats.mean_diag - 1.0).abs() < 1e-3 && snap.block.len() == 16);
    assert_eq!(snap.view, CorrelationView::TopLeft(4));
    let pooled = CorrelationSnapshot::pooled(3, &cross_correlation(&z, &z).unwrap(), 4).unwrap();
    // Each 2x2 pooled diagonal block holds two 1s and two off-diagonal entries.
    assert!((pooled.block[0] - 0.5).abs() < 0.1);
    assert!(CorrelationSnapshot::pooled(3, &cross_correlation(&z, &z).unwrap(), 3).is_err());
}

/// Gaussian bumps on a grid of anchor points in source coordinates: a feature that says where
/// in the source image a location is.
fn positional_features(crops: &[CropBox], grid: usize) -> Tensor {
    let anchors: Vec<(f32, f32)> = (0..8)
        .flat_map(|i| (0..8).map(move |j| (i as f32 * 40.0 / 7.0, j as f32 * 40.0 / 7.0)))
        .collect();
    let mut data = Vec::new();
    for crop in crops {
        let mut f = vec![0f32; anchors.len() * grid * grid];
        for r in 0..grid {
            for c in 0..grid {
                let u = (c as f32 + 0.5) * crop.out_w as f32 / grid as f32 - 0.5;
                let v = (r as f32 + 0.5) * crop.out_h as f32 / grid as f32 - 0.5;
                let (x, y) = crop.view_to_source(u, v);
                for (k, (ax, ay)) in anchors.iter().enumerate() {
                    let d2 = (x - ax).powi(2) + (y - ay).powi(2);
                    f[k * grid * grid + r * grid + c] = (-d2 / (2.0 * 9.0)).exp();
                }
            }
        }
        data.extend(f);
    }
    Tensor::from_vec(data, (crops.len(), anchors.len(), grid, grid), &Device::Cpu).unwrap()
}

fn crop(x: usize, y: usize, w: usize, flipped: bool) -> CropBox {
    CropBox {
        x,
        y,
        w,
        h: w,
        out_w: 32,
        out_h: 32,
        flipped,
    }
}

#[test]
fn correspondence_is_perfect_for_geometric_features_and_chance_for_random() {
    let crops_a = vec![
        crop(0, 0, 30, false),
        crop(4, 2, 24, true),
        crop(8, 8, 32, false),
    ];
    let crops_b = vec![
        crop(6, 4, 28, true),
        crop(0, 0, 36, false),
        crop(2, 6, 26, true),
    ];
    let fa = positional_features(&crops_a, 8);
    let fb = positional_features(&crops_b, 8);
    let acc = correspondence_accuracy(&fa, &fb, &crops_a, &crops_b).unwrap();
    assert!(acc.cells > 50);
    assert_eq!(acc.accuracy, 1.0, "{acc:?}");
    assert!(acc.chance < 0.2);
    // Random features: near the chance level, over many images.
    let n = 64;
    let ca: Vec<CropBox> = (0..n)
        .map(|i| crop(i % 8, (i / 8) % 8, 28, i % 2 == 0))
        .collect();
    let cb: Vec<CropBox> = (0..n)
        .map(|i| crop((i * 3) % 8, i % 5, 30, i % 3 == 0))
        .collect();
    let ra = Tensor::randn(0f32, 1., (n, 16, 8, 8), &Device::Cpu).unwrap();
    let rb = Tensor::randn(0f32, 1., (n, 16, 8, 8), &Device::Cpu).unwrap();
    let r = correspondence_accuracy(&ra, &rb, &ca, &cb).unwrap();
    assert!((r.accuracy - r.chance).abs() < 0.05, "{r:?}");
    // The geometric truth of identical crops is the identity.
    let t = geometric_truth(&crops_a[0], &crops_a[0], (4, 4), (4, 4));
    assert!(t
        .iter()
        .enumerate()
        .all(|(i, c)| *c == Some((i / 4, i % 4))));
    // A flip mirrors the columns.
    let flipped = crop(0, 0, 30, true);
    let t = geometric_truth(&crops_a[0], &flipped, (4, 4), (4, 4));
    assert_eq!(t[0], Some((0, 3)));
}

#[test]
fn similarity_map_peaks_at_the_matching_location() {
    let a = positional_features(&[crop(0, 0, 32, false)], 8)
        .squeeze(0)
        .unwrap();
    let b = positional_features(&[crop(0, 0, 32, true)], 8)
        .squeeze(0)
        .unwrap();
    let m = similarity_map(&a, &b, (2, 1)).unwrap();
    assert_eq!(m.argmax, (2, 6), "the flip sends column 1 to column 6");
    assert!((m.values[2 * 8 + 6] - 1.0).abs() < 1e-5);
    assert!(similarity_map(&a, &b, (8, 0)).is_err());
}

fn count(fig: &Figure, rgb: [u8; 3], x_max: usize) -> usize {
    let im = &fig.image;
    (0..im.height)
        .flat_map(|y| (0..x_max).map(move |x| (x, y)))
        .filter(|&(x, y)| im.rgb(x, y) == rgb)
        .count()
}

#[test]
fn figures_render_at_the_requested_size_and_are_not_blank() {
    let curves = Panel::Curves {
        title: "loss".into(),
        x_label: "step".into(),
        y_label: "loss".into(),
        series: vec![Series::new(
            "a",
            (0..50).map(|i| (i as f64, (i as f64).sqrt())).collect(),
        )],
        markers: vec![(10.0, 3.0)],
    };
    let fig = Figure::from_panels(&[curves.clone(), curves], 2, (300, 200)).unwrap();
    assert_eq!((fig.width(), fig.height()), (600, 200));
    assert!(fig.pixel_variance() > 100.0);
    let png = fig.png().unwrap();
    assert_eq!(&png[1..4], b"PNG");
    let dir = tempfile::tempdir().unwrap();
    fig.save(dir.path().join("sub/curves.png")).unwrap();
    let back = image::open(dir.path().join("sub/curves.png")).unwrap();
    assert_eq!((back.width(), back.height()), (600, 200));
    assert!(Figure::from_panels(&[], 1, (300, 200)).is_err());
}

#[test]
fn heatmap_corners_take_the_colours_of_minus_and_plus_one() {
    // Top-left block −1, bottom-right +1 (a 2x2 matrix).
    let fig = Figure::from_panels(
        &[Panel::Heatmap {
            title: String::new(),
            rows: 2,
            cols: 2,
            values: vec![-1.0, 0.0, 0.0, 1.0],
            range: (-1.0, 1.0),
        }],
        1,
        (400, 300),
    )
    .unwrap();
    let (blue, red) = (diverging(-1.0, -1.0, 1.0), diverging(1.0, -1.0, 1.0));
    assert_eq!(blue, [33, 102, 172]);
    assert_eq!(red, [178, 24, 43]);
    // The matrix area is left of the colour bar.
    let x_max = 400 - 80;
    let im = &fig.image;
    let cells: Vec<(usize, usize)> = (0..im.height)
        .flat_map(|y| (0..x_max).map(move |x| (x, y)))
        .filter(|&(x, y)| im.rgb(x, y) == blue || im.rgb(x, y) == red)
        .collect();
    let (x0, y0) = cells.iter().fold((usize::MAX, usize::MAX), |a, c| {
        (a.0.min(c.0), a.1.min(c.1))
    });
    let (x1, y1) = cells
        .iter()
        .fold((0, 0), |a, c| (a.0.max(c.0), a.1.max(c.1)));
    assert_eq!(im.rgb(x0 + 1, y0 + 1), blue, "top-left cell is −1");
    assert_eq!(im.rgb(x1 - 1, y1 - 1), red, "bottom-right cell is +1");
    assert!(count(&fig, blue, x_max) > 1000 && count(&fig, red, x_max) > 1000);
    // Wrong sizes are errors, not panics.
    assert!(Figure::from_panels(
        &[Panel::Heatmap {
            title: String::new(),
            rows: 2,
            cols: 2,
            values: vec![0.0; 3],
            range: (-1.0, 1.0),
        }],
        1,
        (400, 300)
    )
    .is_err());
    assert!(RgbImage::new(2, 2, vec![0; 11]).is_err());
}

#[test]
fn run_exposes_every_diagnostic_and_writes_the_figures() {
    let mut c = shrink(RunConfig::preset("barlow-twins/tiny").unwrap());
    c.train.steps = 8;
    c.diagnostics.every = 4;
    c.diagnostics.probe_images = 16;
    let mut run = Run::new(c).unwrap();
    run.train(8).unwrap();
    let spikes = run.grad_spikes().unwrap();
    assert_eq!(spikes.data.steps(), (1..=8).collect::<Vec<_>>().as_slice());
    assert!(spikes.data.layers().iter().any(|l| l == "projector"));
    assert!(spikes
        .data
        .norms(0)
        .iter()
        .all(|&n| n > 0.0 && n.is_finite()));
    let corr = run.correlation().unwrap();
    assert_eq!(
        corr.data.dim, 512,
        "Barlow Twins' C is over its projector width"
    );
    assert_eq!(
        run.correlation_history().unwrap().data.len(),
        3,
        "steps 1, 4, 8"
    );
    let col = run.collapse().unwrap();
    assert!(col.data.iter().all(|s| s.effective_rank >= 1.0));
    assert!(run.correspondence().is_ok());
    let sim = run
        .similarity_map(0, (8, 8), FeatureSource::Backbone)
        .unwrap();
    assert_eq!(sim.data.values.len(), sim.data.rows * sim.data.cols);
    assert!(run
        .similarity_map(0, (8, 8), FeatureSource::DenseHead)
        .is_err());
    assert!(run
        .similarity_map(10_000, (8, 8), FeatureSource::Backbone)
        .is_err());
    assert!(run
        .similarity_map(0, (99, 8), FeatureSource::Backbone)
        .is_err());
    let dir = tempfile::tempdir().unwrap();
    let written = run.write_figures(dir.path()).unwrap();
    for name in [
        "curves.png",
        "grad_spikes.png",
        "collapse.png",
        "correlation.png",
        "similarity.png",
        "views.png",
    ] {
        let p = dir.path().join(name);
        assert!(written.contains(&p), "{name} missing from {written:?}");
        let img = image::open(&p).unwrap().to_rgb8();
        let px: Vec<u8> = img.into_raw();
        let mean = px.iter().map(|&v| v as f64).sum::<f64>() / px.len() as f64;
        let var = px.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / px.len() as f64;
        assert!(var > 50.0, "{name} looks blank");
    }
}

#[test]
fn tracker_can_be_switched_off_and_densecl_has_a_dense_head_map() {
    let mut c = shrink(RunConfig::preset("densecl/tiny").unwrap());
    c.moco.queue_size = 32;
    c.diagnostics.grad_spikes = false;
    let mut run = Run::new(c).unwrap();
    run.step().unwrap();
    assert!(run.grad_spikes().is_err());
    let sim = run
        .similarity_map(1, (4, 12), FeatureSource::DenseHead)
        .unwrap();
    assert!(sim.data.values.iter().all(|v| v.is_finite()));
}

#[test]
fn vit_attention_maps_are_distributions_over_the_patches_and_draw() {
    let mut cfg = common::shrink_any("moco-v3/vit-tiny");
    // 16-px views with 4-px patches: a 4×4 grid.
    cfg.model.patch = 4;
    let mut run = Run::new(cfg).unwrap();
    run.train(2).unwrap();
    let maps = run.attention_maps(3).unwrap();
    assert_eq!(maps.data.grid, 4);
    assert_eq!(maps.data.heads.len(), 3, "ViT-tiny has 3 heads");
    for h in &maps.data.heads {
        assert_eq!(h.len(), 16);
        assert!(h.iter().all(|&v| v >= 0.0));
        let sum: f32 = h.iter().sum();
        assert!((sum - 1.0).abs() < 1e-5, "a head's map sums to {sum}");
    }
    assert!(maps.figure.pixel_variance() > 0.0);
    assert!(maps.data.to_string().contains("3 heads"));
    // A test image that does not exist, and a ResNet backbone, are errors.
    assert!(run.attention_maps(10_000).is_err());
    let resnet = Run::new(common::shrink_any("moco-v3/resnet")).unwrap();
    let err = resnet.attention_maps(0).unwrap_err().to_string();
    assert!(err.contains("ViT"), "{err}");
}

#[test]
fn embedding_map_places_every_test_image_and_draws() {
    let mut run = Run::new(shrink(RunConfig::preset("barlow-twins/tiny").unwrap())).unwrap();
    run.train(2).unwrap();
    let map = run.embedding_map().unwrap();
    assert_eq!(map.data.points.len(), 20, "every test image");
    assert!(map
        .data
        .points
        .iter()
        .all(|p| p.0.is_finite() && p.1.is_finite()));
    assert_eq!(map.data.labels.len(), 20);
    assert!((0.0..=1.0).contains(&map.data.neighbour_agreement));
    assert!(map.figure.pixel_variance() > 0.0);
    assert!(map.data.to_string().contains("20 test images"));
}
