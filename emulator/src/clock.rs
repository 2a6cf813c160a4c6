//! The vault's clock, which tests may set off from the operator's
//! (`POST /clock {"skewSeconds": n}`): it stamps `created`/`updated` of
//! secret versions and the `Date` header of every vault response, as one
//! clock does in Key Vault.

use std::sync::atomic::{AtomicI64, Ordering};

#[derive(Debug, Default)]
pub struct VaultClock {
    skew_seconds: AtomicI64,
}

impl VaultClock {
    pub fn set_skew(&self, seconds: i64) {
        self.skew_seconds.store(seconds, Ordering::Relaxed);
    }

    /// Unix seconds on the vault's clock.
    pub fn now(&self) -> i64 {
        super::state::now() + self.skew_seconds.load(Ordering::Relaxed)
    }

    /// The vault's clock as an HTTP `Date` value.
    pub fn http_date(&self) -> String {
        const FORMAT: &[time::format_description::BorrowedFormatItem<'_>] = time::macros::format_description!(
            "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
        );
        time::OffsetDateTime::from_unix_timestamp(self.now())
            .ok()
            .and_then(|t| t.format(FORMAT).ok())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skew_moves_timestamps_and_the_date_header_together() {
        let clock = VaultClock::default();
        clock.set_skew(-3);
        let real = super::super::state::now();
        assert!((clock.now() - (real - 3)).abs() <= 1);
        let date = clock.http_date();
        let parsed = time::PrimitiveDateTime::parse(
            &date,
            time::macros::format_description!(
                "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
            ),
        )
        .unwrap()
        .assume_utc()
        .unix_timestamp();
        assert!((parsed - (real - 3)).abs() <= 1, "{date}");
    }
}
