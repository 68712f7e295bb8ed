//! The test split's backbone features in two dimensions (t-SNE), coloured by class: whether a
//! representation groups the classes it was never told about.

use crate::error::{Error, Result};
use crate::plot::{Figure, Panel, Series};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};
use std::fmt;

/// Points of a 2-D embedding with their classes.
#[derive(Clone, Debug, PartialEq)]
pub struct EmbeddingMap {
    /// One `(x, y)` per image.
    pub points: Vec<(f32, f32)>,
    /// The class of each point.
    pub labels: Vec<usize>,
    /// Class names, indexed by label.
    pub class_names: Vec<String>,
    /// The share of points whose nearest neighbour in the map has their class.
    pub neighbour_agreement: f64,
}

/// The share of points whose nearest other point has the same label.
fn neighbour_agreement(points: &[(f32, f32)], labels: &[usize]) -> f64 {
    if points.len() < 2 {
        return 0.0;
    }
    let same = points
        .iter()
        .enumerate()
        .filter(|&(i, &(x, y))| {
            let nearest = points
                .iter()
                .enumerate()
                .filter(|&(j, _)| j != i)
                .min_by(|a, b| {
                    let d = |p: &(f32, f32)| (p.0 - x).powi(2) + (p.1 - y).powi(2);
                    d(a.1).total_cmp(&d(b.1))
                })
                .map_or(i, |(j, _)| j);
            labels[nearest] == labels[i]
        })
        .count();
    same as f64 / points.len() as f64
}

/// t-SNE of `n` rows of `d` features (row-major) to 2-D: Barnes-Hut (θ 0.5) over Euclidean
/// distances, perplexity 30 (or a third of the points, for few), 1000 iterations, started from
/// a seeded Gaussian (σ 1e-4, as the reference implementation). The crate sums its gradients
/// in parallel, so two maps of the same features can place the clusters differently; which
/// points group together does not change.
pub fn tsne_2d(features: &[f32], (n, d): (usize, usize), seed: u64) -> Result<Vec<(f32, f32)>> {
    if n < 4 || d == 0 || features.len() != n * d {
        return Err(Error::Shape(format!(
            "t-SNE needs at least 4 points with features ({n} points of {d}, {} values)",
            features.len()
        )));
    }
    if features.iter().any(|v| !v.is_finite()) {
        return Err(Error::Invalid("t-SNE of non-finite features".into()));
    }
    let rows: Vec<&[f32]> = features.chunks(d).collect();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let normal = Normal::new(0f32, 1e-4).map_err(|e| Error::Invalid(e.to_string()))?;
    let start: Vec<f32> = (0..2 * n).map(|_| normal.sample(&mut rng)).collect();
    let perplexity = 30f32.min((n as f32 - 1.0) / 3.0);
    let mut tsne = bhtsne::tSNE::new(&rows);
    tsne.embedding_dim(2)
        .perplexity(perplexity)
        .epochs(1000)
        .initial_embedding(start)
        .barnes_hut(0.5, |a: &&[f32], b: &&[f32]| {
            a.iter()
                .zip(b.iter())
                .map(|(x, y)| (x - y) * (x - y))
                .sum::<f32>()
                .sqrt()
        });
    let y = tsne.embedding();
    Ok(y.chunks(2).map(|p| (p[0], p[1])).collect())
}

impl EmbeddingMap {
    /// The map of `n` images' `d` features (row-major) with their labels.
    pub fn new(
        features: &[f32],
        (n, d): (usize, usize),
        labels: Vec<usize>,
        class_names: Vec<String>,
        seed: u64,
    ) -> Result<Self> {
        if labels.len() != n {
            return Err(Error::Shape(format!(
                "{} labels for {n} points",
                labels.len()
            )));
        }
        let points = tsne_2d(features, (n, d), seed)?;
        let neighbour_agreement = neighbour_agreement(&points, &labels);
        Ok(EmbeddingMap {
            points,
            labels,
            class_names,
            neighbour_agreement,
        })
    }

    /// A scatter plot, one colour per class, `title` on top.
    pub fn figure(&self, title: &str) -> Result<Figure> {
        let classes = self.labels.iter().max().map_or(0, |m| m + 1);
        let series = (0..classes)
            .map(|c| {
                let pts = self
                    .points
                    .iter()
                    .zip(&self.labels)
                    .filter(|(_, &l)| l == c)
                    .map(|(&(x, y), _)| (x as f64, y as f64))
                    .collect();
                let name = self.class_names.get(c).cloned().unwrap_or(c.to_string());
                Series::dots(name, pts)
            })
            .collect();
        Figure::from_panels(
            &[Panel::Curves {
                title: title.into(),
                x_label: "t-SNE 1".into(),
                y_label: "t-SNE 2".into(),
                series,
                markers: vec![],
            }],
            1,
            (760, 640),
        )
    }
}

impl fmt::Display for EmbeddingMap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "t-SNE of {} test images; {:.1}% have a nearest neighbour of their own class in the map",
            self.points.len(),
            100.0 * self.neighbour_agreement
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn well_separated_clusters_stay_apart() {
        // Three tight clusters in 10-D, far from each other.
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let noise = Normal::new(0f32, 0.05).unwrap();
        let (per, d) = (20, 10);
        let mut features = Vec::new();
        let mut labels = Vec::new();
        for c in 0..3 {
            for _ in 0..per {
                for k in 0..d {
                    let centre = if k == c { 5.0 } else { 0.0 };
                    features.push(centre + noise.sample(&mut rng));
                }
                labels.push(c);
            }
        }
        let names = vec!["a".into(), "b".into(), "c".into()];
        let map = EmbeddingMap::new(&features, (3 * per, d), labels, names, 0).unwrap();
        assert_eq!(map.points.len(), 60);
        assert!(
            map.neighbour_agreement > 0.95,
            "{}",
            map.neighbour_agreement
        );
        // Every cluster's centroid is farther from the others than its points are from it.
        let centroid = |c: usize| {
            let pts: Vec<_> = map
                .points
                .iter()
                .zip(&map.labels)
                .filter(|(_, &l)| l == c)
                .collect();
            let n = pts.len() as f32;
            (
                pts.iter().map(|p| p.0 .0).sum::<f32>() / n,
                pts.iter().map(|p| p.0 .1).sum::<f32>() / n,
            )
        };
        let dist =
            |a: (f32, f32), b: (f32, f32)| ((a.0 - b.0).powi(2) + (a.1 - b.1).powi(2)).sqrt();
        let cs: Vec<_> = (0..3).map(centroid).collect();
        let spread = map
            .points
            .iter()
            .zip(&map.labels)
            .map(|(&p, &l)| dist(p, cs[l]))
            .fold(0f32, f32::max);
        for a in 0..3 {
            for b in a + 1..3 {
                assert!(dist(cs[a], cs[b]) > spread, "clusters {a} and {b} overlap");
            }
        }
        assert!(map.figure("test").unwrap().pixel_variance() > 0.0);
    }

    #[test]
    fn too_few_or_bad_points_are_errors() {
        assert!(tsne_2d(&[0.0; 6], (3, 2), 0).is_err());
        assert!(tsne_2d(&[0.0; 7], (4, 2), 0).is_err());
        assert!(tsne_2d(&[f32::NAN; 8], (4, 2), 0).is_err());
    }
}
