//! The diagnostics surface of [`Run`]: monitors taken during training and figures on demand.
//!
//! Each call returns a [`Diagnostic`]: the numbers and one figure (a notebook cell shows one
//! image, so several panels are composed into it).

use super::run::Run;
use crate::augment::{Image, ViewAug};
use crate::data::make_batch;
use crate::diagnostics::{
    correlation_strip, similarity_map, AttentionMaps, CollapseStats, CorrelationSnapshot,
    CorrespondenceAccuracy, EmbeddingMap, GradSpikeTracker, SimilarityMap,
};
use crate::error::{Error, Result};
use crate::plot::{Figure, Panel, RgbImage, Series, Tile};
use candle_core::Tensor;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::path::{Path, PathBuf};

/// Numbers and the figure that shows them.
#[derive(Clone, Debug)]
pub struct Diagnostic<T> {
    pub data: T,
    pub figure: Figure,
}

impl<T> Diagnostic<T> {
    /// Writes the figure as a PNG (atomically).
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        self.figure.save(path)
    }

    /// Shows the figure as a notebook cell's result.
    pub fn evcxr_display(&self) {
        self.figure.evcxr_display()
    }
}

/// Which dense features a similarity map compares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FeatureSource {
    /// The backbone's last feature map (every method).
    Backbone,
    /// DenseCL's dense projection head on that map.
    DenseHead,
}

/// Undoes a view's normalisation for display.
fn view_image(chw: &[f32], size: usize, aug: &ViewAug) -> Result<RgbImage> {
    let plane = size * size;
    let mut px = Vec::with_capacity(3 * plane);
    for i in 0..plane {
        for c in 0..3 {
            let v = chw[c * plane + i] * aug.std[c] + aug.mean[c];
            px.push((v.clamp(0.0, 1.0) * 255.0).round() as u8);
        }
    }
    RgbImage::new(size, size, px)
}

fn source_image(img: &Image) -> Result<RgbImage> {
    let mut px = Vec::with_capacity(img.width * img.height * 3);
    for y in 0..img.height {
        for x in 0..img.width {
            px.extend(img.rgb(x, y));
        }
    }
    RgbImage::new(img.width, img.height, px)
}

fn curve(name: &str, points: Vec<(f64, f64)>) -> Series {
    Series::new(name, points)
}

fn panel(title: &str, y: &str, series: Vec<Series>) -> Panel {
    Panel::Curves {
        title: title.into(),
        x_label: "step".into(),
        y_label: y.into(),
        series,
        markers: vec![],
    }
}

impl Run {
    /// An error unless `index` names an image of the test split.
    fn check_test_index(&self, index: usize) -> Result<()> {
        if index >= self.test_data.len() {
            return Err(Error::Invalid(format!(
                "test image {index} does not exist ({} images)",
                self.test_data.len()
            )));
        }
        Ok(())
    }

    /// Per-layer gradient norms of every step and the detected spikes, drawn as MoCo v3's
    /// figure: relative gradient magnitude of the first and last layers over the loss curve.
    pub fn grad_spikes(&self) -> Result<Diagnostic<GradSpikeTracker>> {
        let tracker = self.spikes.as_ref().ok_or_else(|| {
            Error::config(
                "diagnostics.grad_spikes",
                "the gradient-spike tracker is off for this run",
            )
        })?;
        let loss = curve(
            "loss",
            self.record
                .steps
                .iter()
                .map(|r| (r.step as f64, r.loss as f64))
                .collect(),
        );
        Ok(Diagnostic {
            figure: tracker.figure(Some(loss))?,
            data: tracker.clone(),
        })
    }

    /// The cross-correlation snapshot taken now: Barlow Twins' C of the last step, or for any
    /// other method the C of the backbone features of two views of the probe images.
    pub fn correlation(&mut self) -> Result<Diagnostic<CorrelationSnapshot>> {
        let step = self.record.steps.len();
        if self.monitors.correlation.last().map(|s| s.step) != Some(step) {
            self.take_monitors()?;
        }
        let snap = self
            .monitors
            .correlation
            .last()
            .cloned()
            .ok_or_else(|| Error::Invalid("no cross-correlation snapshot".into()))?;
        Ok(Diagnostic {
            figure: snap.figure()?,
            data: snap,
        })
    }

    /// Every snapshot taken during training, as a strip from the first to the last.
    pub fn correlation_history(&self) -> Result<Diagnostic<Vec<CorrelationSnapshot>>> {
        Ok(Diagnostic {
            figure: correlation_strip(&self.monitors.correlation)?,
            data: self.monitors.correlation.clone(),
        })
    }

    /// Collapse monitors over training (embedding std, effective rank, alignment, uniformity),
    /// measured now as well if the last measurement is older than the last step.
    pub fn collapse(&mut self) -> Result<Diagnostic<Vec<CollapseStats>>> {
        if self.monitors.collapse.last().map(|s| s.step) != Some(self.record.steps.len()) {
            self.take_monitors()?;
        }
        let h = &self.monitors.collapse;
        let pts = |f: &dyn Fn(&CollapseStats) -> f64| -> Vec<(f64, f64)> {
            h.iter().map(|s| (s.step as f64, f(s))).collect()
        };
        let panels = [
            panel(
                "effective rank (RankMe) of backbone features",
                "effective rank",
                vec![curve("effective rank", pts(&|s| s.effective_rank))],
            ),
            panel(
                "feature std x sqrt(d) (1: isotropic, 0: collapsed)",
                "std x sqrt(d)",
                vec![curve("std", pts(&|s| s.embed_std / s.ideal_std))],
            ),
            panel(
                "alignment (lower: positives closer)",
                "alignment",
                vec![curve("alignment", pts(&|s| s.alignment))],
            ),
            panel(
                "uniformity (lower: more spread)",
                "uniformity",
                vec![curve("uniformity", pts(&|s| s.uniformity))],
            ),
        ];
        Ok(Diagnostic {
            figure: Figure::from_panels(&panels, 2, (520, 320))?,
            data: h.clone(),
        })
    }

    /// Correspondence accuracy of the backbone feature map against the crop geometry over
    /// training, next to its chance level.
    pub fn correspondence(&mut self) -> Result<Diagnostic<Vec<(usize, CorrespondenceAccuracy)>>> {
        if self.monitors.correspondence.last().map(|s| s.0) != Some(self.record.steps.len()) {
            self.take_monitors()?;
        }
        let h = &self.monitors.correspondence;
        if h.is_empty() {
            return Err(Error::Invalid(
                "the backbone's feature map is a single cell: no correspondence to score".into(),
            ));
        }
        let fig = Figure::from_panels(
            &[panel(
                "dense correspondence accuracy (argmax within one cell of the crop geometry)",
                "accuracy",
                vec![
                    curve(
                        "accuracy",
                        h.iter().map(|(s, a)| (*s as f64, a.accuracy)).collect(),
                    ),
                    curve(
                        "chance",
                        h.iter().map(|(s, a)| (*s as f64, a.chance)).collect(),
                    ),
                ],
            )],
            1,
            (800, 320),
        )?;
        Ok(Diagnostic {
            figure: fig,
            data: h.clone(),
        })
    }

    /// Where does the point `(x, y)` (pixels of view A) of test image `index` go in view B?
    /// Two views are drawn with the run's recipe (seeded by the index); the map is the cosine
    /// similarity of that location's feature to every location of view B.
    pub fn similarity_map(
        &self,
        index: usize,
        (x, y): (usize, usize),
        source: FeatureSource,
    ) -> Result<Diagnostic<SimilarityMap>> {
        self.check_test_index(index)?;
        let size = self.recipe.a.size;
        if x >= size || y >= size {
            return Err(Error::Invalid(format!(
                "point ({x}, {y}) is outside the {size}x{size} view"
            )));
        }
        let mut rng = ChaCha8Rng::seed_from_u64(self.config.seed ^ ((index as u64) << 8));
        let img = self.test_data.image(index);
        let va = self.recipe.a.apply(img, &mut rng);
        let vb = self.recipe.b.apply(img, &mut rng);
        let ta = Tensor::from_vec(va.chw.clone(), (1, 3, size, size), &self.device)?;
        let tb = Tensor::from_vec(vb.chw.clone(), (1, 3, size, size), &self.device)?;
        let map = |t: &Tensor| -> Result<Tensor> {
            let m = match source {
                FeatureSource::Backbone => self.method.feature_map(t)?,
                FeatureSource::DenseHead => self.method.dense_head_map(t)?.ok_or_else(|| {
                    Error::Invalid(format!(
                        "{} has no dense head; use FeatureSource::Backbone",
                        self.method.name()
                    ))
                })?,
            };
            Ok(m.squeeze(0)?)
        };
        let (fa, fb) = (map(&ta)?, map(&tb)?);
        let (_, h, w) = fa.dims3()?;
        let cell = (y * h / size, x * w / size);
        let sim = similarity_map(&fa, &fb, cell)?;
        let figure = sim.figure(
            &view_image(&va.chw, size, &self.recipe.a)?,
            &view_image(&vb.chw, size, &self.recipe.b)?,
            (h, w),
        )?;
        Ok(Diagnostic { data: sim, figure })
    }

    /// Where the ViT's [CLS] token looks in test image `index`: the last block's attention
    /// from [CLS] to the patches, per head, each map summing to 1 over the patches, drawn over
    /// the image (resized to the view size, as the kNN sees it). An error for a ResNet.
    ///
    /// ```no_run
    /// use sslab::prelude::*;
    /// let mut run = Run::new(RunConfig::preset("moco-v3/vit-tiny")?)?;
    /// run.train(50)?;
    /// let maps = run.attention_maps(0)?;
    /// println!("{}", maps.data);
    /// # Ok::<(), sslab::Error>(())
    /// ```
    pub fn attention_maps(&self, index: usize) -> Result<Diagnostic<AttentionMaps>> {
        self.check_test_index(index)?;
        let size = self.recipe.a.size;
        let chw = crate::eval::eval_input(self.test_data.image(index), &self.recipe);
        let shown = view_image(&chw, size, &self.recipe.a)?;
        let x = Tensor::from_vec(chw, (1, 3, size, size), &self.device)?;
        let maps = self.method.cls_attention(&x)?.ok_or_else(|| {
            Error::Invalid(format!(
                "{} on a ResNet has no attention; attention maps need a ViT backbone \
                 (model.backbone = \"vit\", moco-v3)",
                self.method.name()
            ))
        })?;
        let data = AttentionMaps::from_tensor(&maps.squeeze(0)?)?;
        let caption = format!(
            "{}, step {}, test image {index}",
            self.method.name(),
            self.record.steps.len()
        );
        Ok(Diagnostic {
            figure: data.figure(&shown, &caption)?,
            data,
        })
    }

    /// The test split's backbone features (as the kNN sees them, at most the first 2000
    /// images) mapped to 2-D by t-SNE and drawn coloured by class, the method named in the
    /// title; the numbers say how often a point's nearest neighbour in the map shares its
    /// class. The start is seeded by the run's seed (the layout can still differ between two
    /// calls: the t-SNE crate sums in parallel).
    ///
    /// ```no_run
    /// use sslab::prelude::*;
    /// let mut run = Run::new(RunConfig::preset("barlow-twins/tiny")?)?;
    /// run.train(100)?;
    /// let map = run.embedding_map()?;
    /// println!("{}", map.data);
    /// # Ok::<(), sslab::Error>(())
    /// ```
    pub fn embedding_map(&self) -> Result<Diagnostic<EmbeddingMap>> {
        let features = crate::eval::extract_features(
            self.method.as_ref(),
            self.test_data.as_ref(),
            &self.recipe,
            self.config.eval.batch_size,
            &self.device,
        )?;
        let (all, d) = features.dims2()?;
        let n = all.min(2000);
        let values = features
            .narrow(0, 0, n)?
            .to_dtype(candle_core::DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let labels = (0..n).map(|i| self.test_data.label(i)).collect();
        let names = self.test_data.class_names().to_vec();
        let data = EmbeddingMap::new(&values, (n, d), labels, names, self.config.seed)?;
        let title = format!(
            "{} after {} steps: t-SNE of {n} test images' backbone features",
            self.method.name(),
            self.record.steps.len()
        );
        Ok(Diagnostic {
            figure: data.figure(&title)?,
            data,
        })
    }

    /// Loss (and its parts), learning rate and kNN accuracy over the run.
    pub fn curves(&self) -> Result<Figure> {
        let h = &self.record.steps;
        if h.is_empty() {
            return Err(Error::Invalid(
                "no steps yet: call step() or train(n) first".into(),
            ));
        }
        let by_step = |f: &dyn Fn(&super::StepReport) -> f64| -> Vec<(f64, f64)> {
            h.iter().map(|r| (r.step as f64, f(r))).collect()
        };
        let mut panels = vec![panel(
            "loss",
            "loss",
            vec![curve("loss", by_step(&|r| r.loss as f64))],
        )];
        let names: Vec<String> = h[0].parts.iter().map(|(k, _)| k.clone()).collect();
        if !names.is_empty() {
            let parts = names
                .iter()
                .enumerate()
                .map(|(i, n)| {
                    curve(
                        n,
                        by_step(&|r| r.parts.get(i).map_or(f64::NAN, |p| p.1 as f64)),
                    )
                })
                .collect();
            panels.push(panel("loss parts", "value", parts));
        }
        panels.push(panel(
            "learning rate",
            "lr",
            vec![curve("lr", by_step(&|r| r.lr))],
        ));
        if self.record.knn.is_empty() {
            panels.push(panel(
                "throughput",
                "images/s",
                vec![curve("images/s", by_step(&|r| r.images_per_sec))],
            ));
        } else {
            let k = |f: &dyn Fn(&crate::eval::KnnResult) -> f64| -> Vec<(f64, f64)> {
                self.record
                    .knn
                    .iter()
                    .map(|(s, r)| (*s as f64, f(r)))
                    .collect()
            };
            panels.push(panel(
                "kNN accuracy (test split)",
                "%",
                vec![
                    curve("top-1", k(&|r| r.top1)),
                    curve("top-5", k(&|r| r.top5)),
                ],
            ));
        }
        Figure::from_panels(&panels, 2, (520, 320))
    }

    /// The first `n` training images with the two augmented views the recipe makes of them.
    pub fn views(&self, n: usize) -> Result<Figure> {
        let n = n.clamp(1, 16).min(self.train_data.len());
        let batch = make_batch(
            self.train_data.as_ref(),
            &self.recipe,
            n,
            self.config.seed,
            0,
        );
        let size = batch.size;
        let plane = 3 * size * size;
        let mut tiles = Vec::with_capacity(3 * n);
        for (slot, &i) in batch.indices.iter().enumerate() {
            let class = self.train_data.label(i);
            let name = self
                .train_data
                .class_names()
                .get(class)
                .cloned()
                .unwrap_or_else(|| class.to_string());
            let tile = |image, caption: String| Tile {
                image,
                caption,
                overlay: None,
                marker: None,
            };
            tiles.push(tile(
                source_image(self.train_data.image(i))?,
                format!("#{i} {name}"),
            ));
            let chw = |v: &[f32]| v[slot * plane..(slot + 1) * plane].to_vec();
            tiles.push(tile(
                view_image(&chw(&batch.a), size, &self.recipe.a)?,
                "view A".into(),
            ));
            tiles.push(tile(
                view_image(&chw(&batch.b), size, &self.recipe.b)?,
                "view B".into(),
            ));
        }
        Figure::from_panels(
            &[Panel::Images {
                title: format!("augmented pairs ({})", self.recipe.name),
                tiles,
                cols: 3,
                links: vec![],
            }],
            1,
            (480, (160 * n as u32).clamp(160, 4096)),
        )
    }

    /// Writes every figure that applies to this run into `dir` (curves, gradient spikes,
    /// cross-correlation strip, collapse, correspondence, a similarity map, augmented views)
    /// and returns the paths written.
    pub fn write_figures(&mut self, dir: impl AsRef<Path>) -> Result<Vec<PathBuf>> {
        let dir = dir.as_ref();
        let mut figures: Vec<(&str, Figure)> = vec![("curves", self.curves()?)];
        if self.spikes.is_some() {
            figures.push(("grad_spikes", self.grad_spikes()?.figure));
        }
        figures.push(("collapse", self.collapse()?.figure));
        figures.push(("correlation", self.correlation_history()?.figure));
        if let Ok(c) = self.correspondence() {
            figures.push(("correspondence", c.figure));
        }
        let centre = self.recipe.a.size / 2;
        let source = if self.method.has_dense_head() {
            FeatureSource::DenseHead
        } else {
            FeatureSource::Backbone
        };
        let similarity = self.similarity_map(0, (centre, centre), source)?;
        figures.push(("similarity", similarity.figure));
        figures.push(("views", self.views(4)?));
        let mut written = Vec::new();
        for (name, fig) in &figures {
            let p = dir.join(format!("{name}.png"));
            fig.save(&p)?;
            written.push(p);
        }
        // The same figures as images in the TensorBoard log, at the current step.
        let step = self.record.steps.len();
        if let Some(log) = &mut self.metrics_log {
            for (name, fig) in &figures {
                let (w, h) = (fig.image.width, fig.image.height);
                log.image(&format!("figures/{name}"), step, w, h, &fig.png()?)?;
            }
            log.flush()?;
        }
        Ok(written)
    }
}
