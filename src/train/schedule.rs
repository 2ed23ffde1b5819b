//! Learning-rate schedule: linear warmup, then constant, linear or cosine
//! decay to `min_lr_ratio * lr` at the last step.

pub fn learning_rate(
    kind: &str,
    base_lr: f64,
    warmup: u64,
    min_ratio: f64,
    step: u64,
    total: u64,
) -> f64 {
    if warmup > 0 && step <= warmup {
        return base_lr * step as f64 / warmup as f64;
    }
    let decay_steps = total.saturating_sub(warmup).max(1);
    let progress = (step.saturating_sub(warmup) as f64 / decay_steps as f64).clamp(0.0, 1.0);
    let floor = base_lr * min_ratio;
    match kind {
        "linear" => floor + (base_lr - floor) * (1.0 - progress),
        "cosine" => {
            floor + (base_lr - floor) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
        }
        _ => base_lr,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_rises_then_cosine_falls_to_the_floor() {
        assert_eq!(learning_rate("cosine", 1.0, 10, 0.1, 5, 110), 0.5);
        assert_eq!(learning_rate("cosine", 1.0, 10, 0.1, 10, 110), 1.0);
        assert!((learning_rate("cosine", 1.0, 10, 0.1, 60, 110) - 0.55).abs() < 1e-12);
        assert!((learning_rate("cosine", 1.0, 10, 0.1, 110, 110) - 0.1).abs() < 1e-12);
        assert!((learning_rate("linear", 1.0, 0, 0.0, 50, 100) - 0.5).abs() < 1e-12);
        assert_eq!(learning_rate("constant", 0.3, 0, 0.1, 99, 100), 0.3);
    }
}
