//! `sslab data export`: a dataset as an image folder other frameworks read.

use anyhow::Result;
use clap::{Args, Subcommand};
use sslab::data::{write_image_folder, DataSource};
use sslab::train::RunConfig;
use std::path::PathBuf;

#[derive(Subcommand)]
pub enum DataCommand {
    /// Write a data source's train and test splits as OUT/train/<class>/NNNNN.png and
    /// OUT/test/<class>/NNNNN.png (torchvision's ImageFolder layout; `--data folder:OUT/train`
    /// reads it back).
    Export(ExportArgs),
}

#[derive(Args)]
pub struct ExportArgs {
    /// Data spec, as `sslab train --data` takes it (shapes | cifar10:PATH | ...).
    #[arg(long, default_value = "shapes")]
    data: String,
    /// Settings of the built-in shapes, e.g. --set data.shapes.train=5000 (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    sets: Vec<String>,
    /// Output folder.
    #[arg(long)]
    out: PathBuf,
}

pub fn run(cmd: DataCommand) -> Result<()> {
    let DataCommand::Export(a) = cmd;
    let mut cfg = RunConfig::preset("barlow-twins/tiny")?;
    crate::train::apply_sets(&mut cfg, &a.sets)?;
    let (train, test) = DataSource::parse(&a.data, cfg.data.shapes)?.load()?;
    for (split, data) in [("train", train), ("test", test)] {
        let dir = a.out.join(split);
        let n = write_image_folder(data.as_ref(), &dir)?;
        println!(
            "{}: {n} images of {} ({} classes)",
            dir.display(),
            data.name(),
            data.num_classes()
        );
    }
    Ok(())
}
