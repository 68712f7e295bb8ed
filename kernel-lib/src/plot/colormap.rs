//! Colour maps.

/// Blue (`lo`) → white (midpoint) → red (`hi`), after ColorBrewer's RdBu: the sign of a
/// correlation reads at a glance and zero is white. Values outside the range are clamped.
pub fn diverging(v: f32, lo: f32, hi: f32) -> [u8; 3] {
    const BLUE: [f32; 3] = [33.0, 102.0, 172.0];
    const WHITE: [f32; 3] = [247.0, 247.0, 247.0];
    const RED: [f32; 3] = [178.0, 24.0, 43.0];
    let t = if hi > lo { (v - lo) / (hi - lo) } else { 0.5 };
    let t = if t.is_finite() {
        t.clamp(0.0, 1.0)
    } else {
        0.5
    };
    let (a, b, f) = if t < 0.5 {
        (BLUE, WHITE, t * 2.0)
    } else {
        (WHITE, RED, (t - 0.5) * 2.0)
    };
    std::array::from_fn(|i| (a[i] + (b[i] - a[i]) * f).round() as u8)
}

/// Black → red → yellow → white for `t` in `[0, 1]` (clamped): similarity maps over images.
pub fn heat(t: f32) -> [u8; 3] {
    let t = if t.is_finite() {
        t.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let r = (t * 3.0).min(1.0);
    let g = (t * 3.0 - 1.0).clamp(0.0, 1.0);
    let b = (t * 3.0 - 2.0).clamp(0.0, 1.0);
    [(r * 255.0) as u8, (g * 255.0) as u8, (b * 255.0) as u8]
}
