//! The periodic monitors of a run (collapse, cross-correlation, dense correspondence), measured
//! on a fixed set of held-out view pairs while training; `inspect.rs` draws what they hold.

use crate::augment::TwoViewRecipe;
use crate::data::{make_batch, Batch, Dataset};
use crate::diagnostics::{
    collapse_stats, correspondence_accuracy, cross_correlation, CollapseStats, CorrelationSnapshot,
    CorrespondenceAccuracy,
};
use crate::error::{Error, Result};
use crate::methods::Method;
use candle_core::{Device, Tensor};
use std::sync::Arc;

/// What the periodic monitors have recorded.
#[derive(Default)]
pub(super) struct Monitors {
    /// Two views of held-out images, drawn once with a fixed seed.
    probe: Option<Arc<Batch>>,
    pub(super) correlation: Vec<CorrelationSnapshot>,
    pub(super) collapse: Vec<CollapseStats>,
    pub(super) correspondence: Vec<(usize, CorrespondenceAccuracy)>,
}

/// Where the monitors' probe images come from and how many they are.
pub(super) struct ProbeSource<'a> {
    pub test_data: &'a dyn Dataset,
    pub recipe: &'a TwoViewRecipe,
    /// `diagnostics.probe_images`.
    pub images: usize,
    pub seed: u64,
    pub device: &'a Device,
}

impl Monitors {
    /// Steps between monitor measurements: `diagnostics.every`, or ten times per run for 0.
    pub(super) fn every(configured: usize, total_steps: usize) -> usize {
        match configured {
            0 => (total_steps / 10).max(1),
            n => n,
        }
    }

    fn probe(&mut self, src: &ProbeSource) -> Result<Arc<Batch>> {
        if let Some(p) = &self.probe {
            return Ok(p.clone());
        }
        let n = src.images.min(src.test_data.len());
        if n < 2 {
            return Err(Error::Invalid(
                "the monitors need at least 2 test images".into(),
            ));
        }
        let batch = Arc::new(make_batch(
            src.test_data,
            src.recipe,
            n,
            src.seed ^ 0xD1A6,
            0,
        ));
        self.probe = Some(batch.clone());
        Ok(batch)
    }

    /// Measures the collapse, cross-correlation (of the last step where the method has one,
    /// `corr_block` wide) and correspondence monitors of `method` on the probe images now.
    pub(super) fn take(
        &mut self,
        step: usize,
        method: &dyn Method,
        src: &ProbeSource,
        (last_cross_correlation, corr_block): (Option<&Tensor>, usize),
    ) -> Result<()> {
        let p = self.probe(src)?;
        let shape = (p.indices.len(), 3, p.size, p.size);
        let a = Tensor::from_vec(p.a.clone(), shape, src.device)?;
        let b = Tensor::from_vec(p.b.clone(), shape, src.device)?;
        // Detached as they come: the parameters are variables, so each output holds its whole
        // forward graph, and four of them were alive at once.
        let fa = method.features(&a)?.detach();
        let fb = method.features(&b)?.detach();
        self.collapse.push(collapse_stats(step, &fa, &fb)?);
        let c = match last_cross_correlation {
            Some(c) => c.clone(),
            None => cross_correlation(&fa, &fb)?,
        };
        self.correlation
            .push(CorrelationSnapshot::top_left(step, &c, corr_block)?);
        let ma = method.feature_map(&a)?.detach();
        let (_, _, h, w) = ma.dims4()?;
        if h >= 2 && w >= 2 {
            let mb = method.feature_map(&b)?.detach();
            let acc = correspondence_accuracy(&ma, &mb, &p.crops_a, &p.crops_b)?;
            self.correspondence.push((step, acc));
        }
        Ok(())
    }
}
