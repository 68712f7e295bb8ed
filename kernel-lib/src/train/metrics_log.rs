//! A run's numbers as files other tools read while it trains: TensorBoard event files
//! (`DIR/tb/events.out.tfevents.*`, scalars and figures, for `tensorboard --logdir`) and
//! `DIR/metrics.csv` (one row per logged step, for pandas).
//!
//! The event file is TensorFlow's record format: each record is its length (u64, little
//! endian), the masked CRC-32C of those 8 bytes, the data, and the masked CRC-32C of the data;
//! the data is an `Event` protocol buffer (`tensorflow/core/util/event.proto`): `wall_time` (1,
//! double), `step` (2, int64), and either `file_version` (3, string; the first record) or a
//! `Summary` (5) of `Value`s, each a `tag` (1) with a `simple_value` (2, float) or an `Image`
//! (4: height 1, width 2, colorspace 3, PNG bytes 4). Those few fields are written here by hand:
//! no protobuf dependency for five message fields.

use super::record::StepReport;
use crate::error::{Error, Result};
use crate::eval::KnnResult;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// The two files of a run's log, appended to as the run goes.
pub struct MetricsLog {
    dir: PathBuf,
    events: BufWriter<File>,
    events_path: PathBuf,
    csv: BufWriter<File>,
    /// The loss parts' names, fixed by the first row (the CSV header).
    parts: Option<Vec<String>>,
    /// The last step's row, held until the step's kNN (if any) can join it.
    pending: Option<Row>,
}

/// One CSV row.
#[derive(Clone, Debug)]
struct Row {
    step: usize,
    loss: Option<f32>,
    parts: Vec<(String, f32)>,
    lr: Option<f64>,
    images_per_sec: Option<f64>,
    knn: Option<(f64, f64)>,
}

impl Row {
    fn empty(step: usize) -> Self {
        Row {
            step,
            loss: None,
            parts: Vec::new(),
            lr: None,
            images_per_sec: None,
            knn: None,
        }
    }
}

/// `v` as a CSV field: empty when absent.
fn field<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map_or_else(String::new, |v| v.to_string())
}

fn seconds_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

impl MetricsLog {
    /// Creates `dir/metrics.csv` and a new event file in `dir/tb/` (earlier event files stay:
    /// TensorBoard reads them all, as the parts of a resumed run).
    pub fn create(dir: impl Into<PathBuf>) -> Result<Self> {
        let dir = dir.into();
        let tb = dir.join("tb");
        std::fs::create_dir_all(&tb).map_err(|e| Error::data(&tb, e.to_string()))?;
        let now = seconds_now();
        let mut n = 0;
        let events_path = loop {
            // One file per writer: a second log in the same second takes the next number.
            let p = tb.join(format!("events.out.tfevents.{}.sslab.{n}", now as u64));
            if !p.exists() {
                break p;
            }
            n += 1;
        };
        let open = |p: &Path| {
            File::create(p)
                .map(BufWriter::new)
                .map_err(|e| Error::data(p, e.to_string()))
        };
        let mut log = MetricsLog {
            events: open(&events_path)?,
            events_path,
            csv: open(&dir.join("metrics.csv"))?,
            dir,
            parts: None,
            pending: None,
        };
        let version = message(&[(3, Field::Bytes(b"brain.Event:2"))]);
        log.record(&event(now, 0, &version))?;
        log.flush()?;
        Ok(log)
    }

    /// Logs a step: the loss (`loss`), its parts (`loss/<name>`), the learning rate (`lr`) and
    /// the throughput (`images_per_sec`).
    pub fn step(&mut self, r: &StepReport) -> Result<()> {
        let mut values = vec![("loss".to_string(), r.loss)];
        values.extend(r.parts.iter().map(|(k, v)| (format!("loss/{k}"), *v)));
        values.push(("lr".into(), r.lr as f32));
        values.push(("images_per_sec".into(), r.images_per_sec as f32));
        self.scalars(r.step, &values)?;
        if self.parts.is_none() {
            let names: Vec<String> = r.parts.iter().map(|(k, _)| k.clone()).collect();
            self.write_header(names)?;
        }
        self.take_pending()?;
        self.pending = Some(Row {
            loss: Some(r.loss),
            parts: r.parts.clone(),
            lr: Some(r.lr),
            images_per_sec: Some(r.images_per_sec),
            ..Row::empty(r.step)
        });
        Ok(())
    }

    /// Logs a kNN evaluation taken after `step` steps (`knn/top1`, `knn/top5`).
    pub fn knn(&mut self, step: usize, k: &KnnResult) -> Result<()> {
        let values = [
            ("knn/top1".to_string(), k.top1 as f32),
            ("knn/top5".to_string(), k.top5 as f32),
        ];
        self.scalars(step, &values)?;
        match &mut self.pending {
            Some(row) if row.step == step => row.knn = Some((k.top1, k.top5)),
            _ => {
                self.take_pending()?;
                self.pending = Some(Row {
                    knn: Some((k.top1, k.top5)),
                    ..Row::empty(step)
                });
            }
        }
        Ok(())
    }

    /// Logs a figure as a PNG image under `tag` at `step`.
    pub fn image(
        &mut self,
        tag: &str,
        step: usize,
        width: usize,
        height: usize,
        png: &[u8],
    ) -> Result<()> {
        let image = message(&[
            (1, Field::Varint(height as u64)),
            (2, Field::Varint(width as u64)),
            (3, Field::Varint(3)),
            (4, Field::Bytes(png)),
        ]);
        let value = message(&[(1, Field::Bytes(tag.as_bytes())), (4, Field::Bytes(&image))]);
        self.summary(step, &[value])
    }

    /// Pushes both files to the OS (after every logged step, so that a killed run leaves a
    /// readable log and TensorBoard sees the run as it goes). The row held for a kNN stays
    /// held.
    pub fn flush(&mut self) -> Result<()> {
        let Self {
            events,
            events_path,
            csv,
            dir,
            ..
        } = self;
        events
            .flush()
            .map_err(|e| Error::data(events_path.as_path(), e.to_string()))?;
        csv.flush()
            .map_err(|e| Error::data(dir.join("metrics.csv"), e.to_string()))
    }

    fn scalars(&mut self, step: usize, values: &[(String, f32)]) -> Result<()> {
        let encoded: Vec<Vec<u8>> = values
            .iter()
            .map(|(tag, v)| message(&[(1, Field::Bytes(tag.as_bytes())), (2, Field::F32(*v))]))
            .collect();
        self.summary(step, &encoded)
    }

    fn summary(&mut self, step: usize, values: &[Vec<u8>]) -> Result<()> {
        let fields: Vec<(u32, Field)> = values.iter().map(|v| (1, Field::Bytes(v))).collect();
        let summary = message(&fields);
        self.record(&event(
            seconds_now(),
            step as i64,
            &message(&[(5, Field::Bytes(&summary))]),
        ))
    }

    /// One framed record.
    fn record(&mut self, data: &[u8]) -> Result<()> {
        let len = (data.len() as u64).to_le_bytes();
        let mut framed = Vec::with_capacity(data.len() + 16);
        framed.extend_from_slice(&len);
        framed.extend_from_slice(&masked_crc(&len).to_le_bytes());
        framed.extend_from_slice(data);
        framed.extend_from_slice(&masked_crc(data).to_le_bytes());
        self.events
            .write_all(&framed)
            .map_err(|e| Error::data(&self.events_path, e.to_string()))
    }

    /// The CSV header, with the loss parts' columns in `names`' order.
    fn write_header(&mut self, names: Vec<String>) -> Result<()> {
        let mut header = vec!["step".to_string(), "loss".into()];
        header.extend(names.iter().cloned());
        header.extend(["lr", "images_per_sec", "knn_top1", "knn_top5"].map(String::from));
        self.parts = Some(names);
        self.csv_line(&header)
    }

    /// Writes the held row once the header is out (a kNN at init waits for the first step,
    /// whose loss parts name the columns).
    fn take_pending(&mut self) -> Result<()> {
        let Some(parts) = &self.parts else {
            return Ok(());
        };
        let Some(row) = self.pending.take() else {
            return Ok(());
        };
        let mut cells = vec![row.step.to_string(), field(row.loss)];
        for name in parts {
            cells.push(field(
                row.parts.iter().find(|(k, _)| k == name).map(|(_, v)| v),
            ));
        }
        cells.extend([
            field(row.lr),
            field(row.images_per_sec),
            field(row.knn.map(|k| k.0)),
            field(row.knn.map(|k| k.1)),
        ]);
        self.csv_line(&cells)
    }

    fn csv_line(&mut self, cells: &[String]) -> Result<()> {
        let line = cells.join(",") + "\n";
        let path = self.dir.join("metrics.csv");
        self.csv
            .write_all(line.as_bytes())
            .map_err(|e| Error::data(path, e.to_string()))
    }
}

impl Drop for MetricsLog {
    fn drop(&mut self) {
        // The row held back (the last step's) still reaches the file; nothing to report to.
        if self.parts.is_none() && self.pending.is_some() {
            let _ = self.write_header(Vec::new());
        }
        let _ = self.take_pending();
        let _ = self.flush();
    }
}

/// TensorFlow's masked CRC-32C: rotated right by 15 bits plus a constant, so that a CRC of
/// data holding CRCs stays well distributed.
fn masked_crc(data: &[u8]) -> u32 {
    let crc = crc32c::crc32c(data);
    crc.rotate_right(15).wrapping_add(0xa282_ead8)
}

/// A protocol-buffer field value of the kinds the event format needs.
enum Field<'a> {
    Varint(u64),
    F32(f32),
    F64(f64),
    Bytes(&'a [u8]),
}

fn varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// The encoding of a message with these fields, in order.
fn message(fields: &[(u32, Field)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (number, value) in fields {
        let n = u64::from(*number) << 3;
        match value {
            Field::Varint(v) => {
                varint(n, &mut out);
                varint(*v, &mut out);
            }
            Field::F64(v) => {
                varint(n | 1, &mut out);
                out.extend_from_slice(&v.to_le_bytes());
            }
            Field::Bytes(b) => {
                varint(n | 2, &mut out);
                varint(b.len() as u64, &mut out);
                out.extend_from_slice(b);
            }
            Field::F32(v) => {
                varint(n | 5, &mut out);
                out.extend_from_slice(&v.to_le_bytes());
            }
        }
    }
    out
}

/// An `Event` with its time and step around the already encoded `rest` fields.
fn event(wall_time: f64, step: i64, rest: &[u8]) -> Vec<u8> {
    let mut out = message(&[(1, Field::F64(wall_time)), (2, Field::Varint(step as u64))]);
    out.extend_from_slice(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protobuf_fields_encode_as_the_wire_format() {
        // Field 1 varint 150: 08 96 01 (the protobuf documentation's example).
        assert_eq!(message(&[(1, Field::Varint(150))]), [0x08, 0x96, 0x01]);
        // Field 2 string "testing": 12 07 74 65 73 74 69 6e 67.
        assert_eq!(
            message(&[(2, Field::Bytes(b"testing"))]),
            [0x12, 0x07, b't', b'e', b's', b't', b'i', b'n', b'g']
        );
        assert_eq!(message(&[(2, Field::F32(1.0))]), [0x15, 0, 0, 0x80, 0x3f]);
    }

    #[test]
    fn the_crc_is_castagnoli_masked() {
        // CRC-32C of "123456789" is e3069283 (the standard check value).
        assert_eq!(crc32c::crc32c(b"123456789"), 0xe306_9283);
        assert_eq!(
            masked_crc(b"123456789"),
            0xe306_9283u32.rotate_right(15).wrapping_add(0xa282_ead8)
        );
    }
}
