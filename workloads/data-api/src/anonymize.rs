//! Anonymization on consent revocation (sections 3.1.4 and 4.4.2).
//!
//! The location is displaced to a random point whose geodesic distance d from the original
//! satisfies d_min ≤ d ≤ d_max of equation 3.1, with bounds that shrink as the population
//! density of the household's NUTS-3 district grows. Instead of rejection sampling in a
//! bounding square, the point is drawn exactly: a uniform azimuth and a distance whose
//! distribution makes the point uniform over the annulus' area, then placed on the WGS 84
//! geodesic with GeographicLib's direct solution.

use std::sync::LazyLock;

use chrono::{DateTime, Utc};
use geographiclib_rs::{DirectGeodesic, Geodesic, InverseGeodesic};
use rand::Rng;
use serde::Serialize;

use crate::model::{Household, Location};

static WGS84: LazyLock<Geodesic> = LazyLock::new(Geodesic::wgs84);

/// Mean Earth radius (IUGG), used only to shape the distance distribution.
const MEAN_EARTH_RADIUS_M: f64 = 6_371_008.8;

/// Distance bounds in metres.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct DistanceBounds {
    pub d_min: f64,
    pub d_max: f64,
}

impl DistanceBounds {
    /// The largest displacement section 3.1.4 allows (8 km to 20 km, the caps of
    /// equation 3.1); used when the district, and so the density, is unknown.
    pub const MOST_CONSERVATIVE: DistanceBounds = DistanceBounds {
        d_min: 8000.0,
        d_max: 20_000.0,
    };

    /// Equation 3.1 for a population density ρ in inhabitants per km².
    pub fn for_density(rho: f64) -> DistanceBounds {
        if !rho.is_finite() || rho < 0.0 {
            return DistanceBounds::MOST_CONSERVATIVE;
        }
        DistanceBounds {
            d_min: (-1.321 * rho + 4264.0).clamp(300.0, 8000.0),
            d_max: (-3.107 * rho + 10_621.0).clamp(1300.0, 20_000.0),
        }
    }

    pub fn contains(&self, d: f64) -> bool {
        self.d_min <= d && d <= self.d_max
    }
}

/// Geodesic distance on the WGS 84 ellipsoid in metres.
pub fn geodesic_distance(a: Location, b: Location) -> f64 {
    WGS84.inverse(a.latitude, a.longitude, b.latitude, b.longitude)
}

/// A random point at geodesic distance within `bounds` from `origin`, uniform over the
/// annulus' area.
pub fn displace<R: Rng + ?Sized>(
    origin: Location,
    bounds: DistanceBounds,
    rng: &mut R,
) -> Location {
    // Area of a spherical cap of geodesic radius s is proportional to sin²(s / 2R).
    let cap = |s: f64| (s / (2.0 * MEAN_EARTH_RADIUS_M)).sin().powi(2);
    let (low, high) = (cap(bounds.d_min), cap(bounds.d_max));
    // Floating-point error could put the distance computed back from the stored point a
    // hair outside the bounds; drawing again keeps the guarantee exact.
    for _ in 0..64 {
        let u: f64 = rng.gen();
        let s = 2.0 * MEAN_EARTH_RADIUS_M * (low + u * (high - low)).sqrt().asin();
        let azimuth = rng.gen_range(-180.0..180.0);
        let candidate = place(origin, azimuth, s);
        if bounds.contains(geodesic_distance(origin, candidate)) {
            return candidate;
        }
    }
    let candidate = place(
        origin,
        rng.gen_range(-180.0..180.0),
        (bounds.d_min + bounds.d_max) / 2.0,
    );
    debug_assert!(bounds.contains(geodesic_distance(origin, candidate)));
    candidate
}

fn place(origin: Location, azimuth: f64, distance: f64) -> Location {
    let (latitude, longitude): (f64, f64) =
        WGS84.direct(origin.latitude, origin.longitude, azimuth, distance);
    Location {
        latitude,
        longitude: normalize_longitude(longitude),
    }
}

fn normalize_longitude(lon: f64) -> f64 {
    let wrapped = (lon + 180.0).rem_euclid(360.0) - 180.0;
    if wrapped == -180.0 && lon > 0.0 {
        180.0
    } else {
        wrapped
    }
}

/// What anonymization did, for the log (never the original location).
#[derive(Debug, Clone, Serialize)]
pub struct AnonymizationReport {
    pub bounds: DistanceBounds,
    pub district: Option<String>,
}

/// Measures (A)–(C) of section 3.1.4 applied to a household whose consent was revoked:
/// contact details and address removed, location displaced within `bounds`, PV systems
/// normalized. Measurements are untouched and stay linked to the household.
pub fn anonymize_household<R: Rng + ?Sized>(
    household: &mut Household,
    bounds: DistanceBounds,
    rng: &mut R,
    now: DateTime<Utc>,
) {
    household.user = None;
    household.address = None;
    if let Some(location) = household.location {
        household.location = Some(displace(location, bounds, rng));
    }
    for pv in &mut household.pv_systems {
        pv.anonymize();
    }
    household.anonymized_at = Some(now);
    household.updated_at = now;
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn equation_3_1_bounds() {
        let b = DistanceBounds::for_density(0.0);
        assert_eq!((b.d_min, b.d_max), (4264.0, 10_621.0));
        // Berlin-like density: both bounds clamp to their floors.
        let b = DistanceBounds::for_density(4000.0);
        assert_eq!((b.d_min, b.d_max), (300.0, 1300.0));
        let b = DistanceBounds::for_density(1000.0);
        assert!((b.d_min - 2943.0).abs() < 1e-9 && (b.d_max - 7514.0).abs() < 1e-9);
        assert_eq!(
            DistanceBounds::for_density(f64::NAN),
            DistanceBounds::MOST_CONSERVATIVE
        );
    }

    #[test]
    fn displaced_points_fill_the_annulus_evenly() {
        // The area between d_min and the mid-area radius must get half of the points.
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let origin = Location {
            latitude: 52.52,
            longitude: 13.405,
        };
        let bounds = DistanceBounds {
            d_min: 1000.0,
            d_max: 3000.0,
        };
        let r_mid = ((bounds.d_min.powi(2) + bounds.d_max.powi(2)) / 2.0).sqrt();
        let n = 4000;
        let inner = (0..n)
            .filter(|_| geodesic_distance(origin, displace(origin, bounds, &mut rng)) < r_mid)
            .count();
        let share = inner as f64 / n as f64;
        assert!((0.45..0.55).contains(&share), "inner share {share}");
    }

    #[test]
    fn longitudes_stay_in_range_across_the_antimeridian() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let origin = Location {
            latitude: 0.0,
            longitude: 179.99,
        };
        for _ in 0..200 {
            let p = displace(origin, DistanceBounds::MOST_CONSERVATIVE, &mut rng);
            assert!((-180.0..=180.0).contains(&p.longitude));
        }
    }
}
