//! Checks on registration details beyond what their types say; every failure names the
//! offending field with a JSON path such as `pv_systems[1].tilt`.

use chrono::{NaiveDate, Utc};

use crate::model::{Address, Location, Metadata, User};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> FieldError {
        FieldError {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// A pragmatic address check: one `@`, a non-empty local part, a dotted domain, no
/// spaces or control characters. Deliverability is the researcher's concern.
pub fn is_email(s: &str) -> bool {
    if s.len() > 254
        || s.chars()
            .any(|c| c.is_whitespace() || c.is_control() || matches!(c, ',' | '<' | '>' | '"'))
    {
        return false;
    }
    let Some((local, domain)) = s.split_once('@') else {
        return false;
    };
    !local.is_empty()
        && local.len() <= 64
        && !domain.contains('@')
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !domain.contains("..")
}

fn text(field: String, value: &str, max: usize) -> Result<(), FieldError> {
    if value.trim().is_empty() {
        return Err(FieldError::new(field, "must not be empty"));
    }
    if value.chars().count() > max || value.chars().any(char::is_control) {
        return Err(FieldError::new(
            field,
            format!("must be at most {max} characters without control characters"),
        ));
    }
    Ok(())
}

pub fn user(prefix: &str, user: &User) -> Result<(), FieldError> {
    text(format!("{prefix}.name"), &user.name, 200)?;
    if !is_email(&user.email) {
        return Err(FieldError::new(
            format!("{prefix}.email"),
            "is not an email address",
        ));
    }
    Ok(())
}

pub fn address(prefix: &str, address: &Address) -> Result<(), FieldError> {
    text(format!("{prefix}.street"), &address.street, 200)?;
    text(format!("{prefix}.house_number"), &address.house_number, 20)?;
    text(format!("{prefix}.postal_code"), &address.postal_code, 20)?;
    text(format!("{prefix}.city"), &address.city, 200)?;
    let country = &address.country;
    if country.len() != 2 || !country.chars().all(|c| c.is_ascii_uppercase()) {
        return Err(FieldError::new(
            format!("{prefix}.country"),
            "must be an ISO 3166-1 alpha-2 code such as DE",
        ));
    }
    Ok(())
}

pub fn location(prefix: &str, location: &Location) -> Result<(), FieldError> {
    if !(location.latitude.is_finite() && (-90.0..=90.0).contains(&location.latitude)) {
        return Err(FieldError::new(
            format!("{prefix}.latitude"),
            "must be between -90 and 90 degrees",
        ));
    }
    if !(location.longitude.is_finite() && (-180.0..=180.0).contains(&location.longitude)) {
        return Err(FieldError::new(
            format!("{prefix}.longitude"),
            "must be between -180 and 180 degrees",
        ));
    }
    Ok(())
}

pub fn metadata(prefix: &str, metadata: &Metadata) -> Result<(), FieldError> {
    for (name, value) in [
        ("children", metadata.children),
        ("adults", metadata.adults),
        ("employed_adults", metadata.employed_adults),
    ] {
        if value > 50 {
            return Err(FieldError::new(
                format!("{prefix}.{name}"),
                "must be at most 50",
            ));
        }
    }
    if metadata.adults == 0 {
        return Err(FieldError::new(
            format!("{prefix}.adults"),
            "a household has at least one adult",
        ));
    }
    if metadata.employed_adults > metadata.adults {
        return Err(FieldError::new(
            format!("{prefix}.employed_adults"),
            "cannot exceed the number of adults",
        ));
    }
    Ok(())
}

pub fn pv_specification(
    prefix: &str,
    nominal_power: Option<f64>,
    azimuth: Option<f64>,
    tilt: Option<f64>,
    installation_date: Option<NaiveDate>,
) -> Result<(), FieldError> {
    if let Some(p) = nominal_power {
        if !(p.is_finite() && p > 0.0 && p <= 100_000.0) {
            return Err(FieldError::new(
                format!("{prefix}.nominal_power"),
                "must be a positive number of kWp (at most 100000)",
            ));
        }
    }
    if let Some(a) = azimuth {
        if !(a.is_finite() && (0.0..360.0).contains(&a)) {
            return Err(FieldError::new(
                format!("{prefix}.azimuth"),
                "must be in [0, 360) degrees from north",
            ));
        }
    }
    if let Some(t) = tilt {
        if !(t.is_finite() && (0.0..=90.0).contains(&t)) {
            return Err(FieldError::new(
                format!("{prefix}.tilt"),
                "must be in [0, 90] degrees",
            ));
        }
    }
    if let Some(d) = installation_date {
        let latest = Utc::now().date_naive() + chrono::Days::new(366);
        if d > latest || d < NaiveDate::from_ymd_opt(1950, 1, 1).expect("valid date") {
            return Err(FieldError::new(
                format!("{prefix}.installation_date"),
                "must be a date between 1950 and next year",
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails() {
        for good in ["a@b.de", "erika.mustermann+survey@example.org"] {
            assert!(is_email(good), "{good}");
        }
        for bad in [
            "", "a", "@b.de", "a@", "a@b", "a b@c.de", "a@b@c.de", "a@.de", "a@b..de", "a@b.de.",
        ] {
            assert!(!is_email(bad), "{bad}");
        }
    }

    #[test]
    fn metadata_rules_name_the_field() {
        let mut m = Metadata {
            children: 1,
            adults: 2,
            employed_adults: 3,
            ev_charger: false,
            heat_pump: false,
            home_battery: false,
        };
        assert_eq!(
            metadata("metadata", &m).unwrap_err().field,
            "metadata.employed_adults"
        );
        m.employed_adults = 1;
        assert!(metadata("metadata", &m).is_ok());
    }
}
