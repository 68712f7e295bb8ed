//! Ranks as threads of this process (`dist::ThreadWorld`): its collectives, a rank that never
//! arrives, the kNN evaluation shared out among ranks against one process, and a few steps of
//! every method on two ranks against one process with the global batch. The same checks
//! through MPI processes are in `repl/tests/distributed.rs`; these need no MPI.

mod common;

use common::shrink_any;
use sslab::dist::{ThreadWorld, World};
use sslab::eval::{extract_features, extract_features_across};
use sslab::train::Run;
use std::time::Duration;

/// `f` on each rank of a new `size`-rank world, one thread each; the results in rank order.
fn on_ranks<T: Send>(size: usize, f: impl Fn(World) -> T + Sync) -> Vec<T> {
    let ranks = ThreadWorld::ranks(size, Duration::from_secs(120));
    let f = &f;
    std::thread::scope(|s| {
        let handles: Vec<_> = ranks.into_iter().map(|w| s.spawn(move || f(w))).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

#[test]
fn thread_ranks_reduce_gather_and_broadcast_in_rank_order() {
    let out = on_ranks(3, |w| {
        let r = w.rank() as f32;
        let mut sum = vec![r, 10.0 * r];
        w.all_reduce_sum(&mut sum).unwrap();
        let mut sum64 = vec![0.1 * (r as f64 + 1.0)];
        w.all_reduce_sum_f64(&mut sum64).unwrap();
        let gathered = w.all_gather(&[r, -r]).unwrap();
        let mut b = vec![r + 5.0; 2];
        w.broadcast(&mut b, 2).unwrap();
        w.barrier().unwrap();
        let uneven = w.all_gather(&vec![0.0; w.rank() + 1]);
        (sum, sum64, gathered, b, uneven.is_err())
    });
    for (sum, sum64, gathered, b, uneven) in out {
        assert_eq!(sum, vec![3.0, 30.0]);
        assert_eq!(sum64, vec![0.1 + 0.2 + 0.30000000000000004]);
        assert_eq!(gathered, vec![0.0, -0.0, 1.0, -1.0, 2.0, -2.0]);
        assert_eq!(b, vec![7.0, 7.0]);
        assert!(uneven, "buffers of different lengths must be refused");
    }
}

#[test]
fn a_rank_that_never_arrives_makes_the_others_fail_instead_of_hang() {
    let ranks = ThreadWorld::ranks(2, Duration::from_millis(200));
    let mut v = vec![1f32];
    let e = ranks[0].all_reduce_sum(&mut v).unwrap_err().to_string();
    assert!(e.contains("waited"), "{e}");
    assert!(ranks[0].broadcast(&mut v, 5).is_err());
}

/// kNN with the features shared out among three ranks (the test split does not divide by
/// three) gives every rank the one-process features and accuracy.
#[test]
fn knn_shared_out_among_ranks_is_the_one_process_knn() {
    let config = || {
        let mut c = shrink_any("barlow-twins/tiny");
        c.train.batch_size = 18;
        c
    };
    let mut one = Run::new(config()).unwrap();
    let want = one.knn().unwrap();
    let data = one.test_data().clone();
    assert!(!data.len().is_multiple_of(3));
    let features = extract_features(one.method(), data.as_ref(), one.recipe(), 7, one.device())
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    let got = on_ranks(3, |w| {
        let mut run = Run::new(config()).unwrap();
        run.distribute(w.clone()).unwrap();
        let f = extract_features_across(
            run.method(),
            data.as_ref(),
            run.recipe(),
            7,
            run.device(),
            Some(&w),
        )
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
        (run.knn().unwrap(), f)
    });
    for (k, f) in got {
        assert_eq!(k, want);
        assert_eq!(f.len(), features.len());
        for (a, b) in f.iter().flatten().zip(features.iter().flatten()) {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
    }
}

/// Two ranks with half the batch each take the steps of one process with the whole batch,
/// for every method: the same losses, to float tolerance (the exact weight comparison is
/// the MPI test's).
#[test]
fn two_thread_ranks_take_the_steps_of_one_process() {
    for preset in [
        "barlow-twins/tiny",
        "moco-v2/tiny",
        "densecl/tiny",
        "moco-v3/vit-tiny",
        "moco-v3/resnet",
        "simclr/tiny",
        "byol/tiny",
        "simsiam/tiny",
        "vicreg/tiny",
    ] {
        let losses =
            |run: &mut Run| -> Vec<f32> { (0..3).map(|_| run.step().unwrap().loss).collect() };
        let want = losses(&mut Run::new(shrink_any(preset)).unwrap());
        let got = on_ranks(2, |w| {
            let mut run = Run::new(shrink_any(preset)).unwrap();
            run.distribute(w).unwrap();
            losses(&mut run)
        });
        for l in got {
            for (s, (a, b)) in l.iter().zip(&want).enumerate() {
                assert!(
                    (a - b).abs() <= 1e-4 * b.abs().max(1.0),
                    "{preset} step {}: {a} on two thread ranks, {b} in one process",
                    s + 1
                );
            }
        }
    }
}
