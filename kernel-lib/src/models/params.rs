//! A named, ordered parameter store. Order is registration order, so optimiser state, EMA copies
//! and checkpoints line up by index as well as by name.

use crate::error::{Error, Result};
use candle_core::{DType, Device, Tensor, Var};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};

/// What a tensor is for; decides optimiser grouping and what the EMA copies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParamKind {
    /// A trainable weight (conv kernel, linear matrix).
    Weight,
    /// A trainable bias.
    Bias,
    /// A trainable normalisation scale or shift (BN/LN γ, β).
    Norm,
    /// A non-trainable buffer updated in the forward pass (BN running statistics).
    Buffer,
    /// A tensor that stays at its initial value (a frozen patch projection, say).
    Frozen,
}

impl ParamKind {
    /// Whether the optimiser updates tensors of this kind.
    pub fn trainable(self) -> bool {
        matches!(self, ParamKind::Weight | ParamKind::Bias | ParamKind::Norm)
    }
}

/// One named tensor.
#[derive(Clone, Debug)]
pub struct Param {
    pub name: String,
    pub var: Var,
    pub kind: ParamKind,
}

/// All tensors of a model, in registration order.
#[derive(Clone, Debug, Default)]
pub struct ParamStore {
    pub params: Vec<Param>,
}

impl ParamStore {
    /// The trainable tensors.
    pub fn trainable(&self) -> impl Iterator<Item = &Param> {
        self.params.iter().filter(|p| p.kind.trainable())
    }

    /// Looks a tensor up by name.
    pub fn get(&self, name: &str) -> Option<&Param> {
        self.params.iter().find(|p| p.name == name)
    }

    /// Number of trainable scalars.
    pub fn num_trainable(&self) -> usize {
        self.trainable().map(|p| p.var.elem_count()).sum()
    }
}

/// How to initialise a new tensor.
#[derive(Clone, Copy, Debug)]
pub enum Init {
    Const(f32),
    Normal { std: f32 },
    Uniform { bound: f32 },
}

/// Registers tensors into a [`ParamStore`], drawing initial values from a seeded generator.
pub struct ParamBuilder {
    pub store: ParamStore,
    rng: ChaCha8Rng,
    device: Device,
}

impl ParamBuilder {
    /// A builder whose initial values depend only on `seed`.
    pub fn new(seed: u64, device: &Device) -> Self {
        ParamBuilder {
            store: ParamStore::default(),
            rng: ChaCha8Rng::seed_from_u64(seed),
            device: device.clone(),
        }
    }

    /// The device tensors are created on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Creates and registers a tensor.
    pub fn var(&mut self, name: &str, shape: &[usize], init: Init, kind: ParamKind) -> Result<Var> {
        if self.store.get(name).is_some() {
            return Err(Error::Invalid(format!(
                "parameter '{name}' registered twice"
            )));
        }
        let n: usize = shape.iter().product();
        let data: Vec<f32> = match init {
            Init::Const(c) => vec![c; n],
            Init::Normal { std } => {
                let d = Normal::new(0.0f32, std.max(0.0))
                    .map_err(|e| Error::Invalid(format!("init of {name}: {e}")))?;
                (0..n).map(|_| d.sample(&mut self.rng)).collect()
            }
            Init::Uniform { bound } => (0..n)
                .map(|_| self.rng.gen_range(-bound..=bound.max(f32::MIN_POSITIVE)))
                .collect(),
        };
        let t = Tensor::from_vec(data, shape, &self.device)?.to_dtype(DType::F32)?;
        let var = Var::from_tensor(&t)?;
        self.store.params.push(Param {
            name: name.to_string(),
            var: var.clone(),
            kind,
        });
        Ok(var)
    }

    /// Finishes building.
    pub fn finish(self) -> ParamStore {
        self.store
    }
}
