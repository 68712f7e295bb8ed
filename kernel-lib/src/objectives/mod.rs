//! Pure loss functions over tensors. Each documents its formula, its paper and which
//! convention of the reference code it follows.

mod barlow_twins;
mod cosine;
mod densecl;
mod info_nce;
mod moco_v3;
mod simclr;
mod vicreg;

pub use barlow_twins::{barlow_twins_loss, BarlowTwinsLoss};
pub use cosine::{byol_loss, simsiam_loss};
pub use densecl::{
    dense_correspondence, dense_info_nce, densecl_loss, similarity_matrix, DenseClInputs,
    DenseClLoss,
};
pub use info_nce::{cross_entropy, cross_entropy_first, info_nce_queue, l2_normalize, InfoNce};
pub use moco_v3::{moco_v3_ctr, moco_v3_ctr_at, moco_v3_loss};
pub use simclr::{nt_xent, nt_xent_at};
pub use vicreg::{
    vicreg_loss, vicreg_loss_gathered, VicregLoss, VicregWeights, VICREG_EPS, VICREG_GAMMA,
};
