//! `Run::traced_step` is the real step: two runs from one config, one stepped plainly and one
//! traced, end with the same weights, momentum encoder and queue, and the trace holds what it
//! promises (views, every tensor before and after, a gradient per trainable tensor).

mod common;

use common::max_abs_diff;
use sslab::prelude::*;

#[test]
fn a_traced_step_is_the_step_and_records_every_tensor() {
    let mut cfg = common::shrink_any("moco-v2/tiny");
    cfg.diagnostics.grad_spikes = false;
    let mut plain = Run::new(cfg.clone()).unwrap();
    let mut traced = Run::new(cfg).unwrap();
    let report = plain.step().unwrap();
    let trace = traced.traced_step().unwrap();
    assert_eq!(traced.steps_done(), 1);

    let loss = trace.get("loss").unwrap().to_vec1::<f32>().unwrap()[0];
    assert!((loss - report.loss).abs() <= 1e-6 * report.loss.abs().max(1.0));
    let (a, b) = (trace.get("views.a").unwrap(), trace.get("views.b").unwrap());
    assert_eq!(a.dims(), &[16, 3, 16, 16]);
    assert!(max_abs_diff(a, b) > 0.0, "two different views");

    let method = plain.method();
    let mut moved = 0;
    for p in &method.params().params {
        let init = trace.get(&format!("init.{}", p.name)).unwrap();
        let after = trace.get(&format!("after.{}", p.name)).unwrap();
        // The traced run's weights after the step are the plain run's.
        assert_eq!(max_abs_diff(after, p.var.as_tensor()), 0.0, "{}", p.name);
        if p.kind.trainable() {
            let g = trace.get(&format!("grad.{}", p.name));
            assert!(g.is_some(), "no gradient for {}", p.name);
            assert_eq!(g.unwrap().dims(), p.var.dims());
            moved += usize::from(max_abs_diff(init, after) > 0.0);
        }
    }
    assert!(moved > 10, "the step moved {moved} tensors");
    for p in &method.momentum_params().unwrap().params {
        let after = trace.get(&format!("after_momentum.{}", p.name)).unwrap();
        assert_eq!(max_abs_diff(after, p.var.as_tensor()), 0.0, "{}", p.name);
    }
    let (name, queue) = &method.queues()[0];
    let after = trace.get(&format!("queue_after.{name}")).unwrap();
    assert_eq!(max_abs_diff(after, queue.keys_by_row()), 0.0);
    let before = trace.get(&format!("queue_before.{name}")).unwrap();
    assert!(max_abs_diff(before, after) > 0.0, "the step enqueued keys");

    // Saved and read back, every tensor keeps its name and values.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("step.safetensors");
    trace.save(&path).unwrap();
    let back = candle_core::safetensors::load(&path, &candle_core::Device::Cpu).unwrap();
    assert_eq!(back.len(), trace.tensors.len());
    assert_eq!(
        max_abs_diff(
            &back["grad.head.0.linear.weight"],
            trace.get("grad.head.0.linear.weight").unwrap()
        ),
        0.0
    );
}
