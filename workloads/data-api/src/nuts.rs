//! NUTS-3 districts with their population density (section 4.4.2): which district a
//! household lies in decides how far its location is displaced on revocation.
//!
//! The server loads a GeoJSON FeatureCollection whose features carry `nuts3`, `name` and
//! `density` (inhabitants per km²) properties. `data-api nuts import` builds that file from
//! the official sources: district boundaries from BKG (VG250 or NUTS250 shapefile in
//! geographic coordinates, or a GeoJSON) and densities from Destatis' `04-kreise.xlsx`
//! (or a `nuts3,density` CSV).

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use geo::{BoundingRect, Intersects, MapCoords, MultiPolygon, Point, Rect};
use serde_json::{json, Map, Value};

use crate::anonymize::DistanceBounds;
use crate::model::Location;

/// The districts shipped with the Data API (see `data/README.md` for source and date).
pub const EMBEDDED_GEOJSON: &str = include_str!("../data/nuts3-de.geojson");

#[derive(Debug, thiserror::Error)]
pub enum NutsError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("GeoJSON: {0}")]
    GeoJson(#[from] Box<geojson::Error>),
    #[error("feature {index}: {message}")]
    Feature { index: usize, message: String },
    #[error("{path}: {message}")]
    Source { path: PathBuf, message: String },
    #[error("shapefile: {0}")]
    Shapefile(#[from] shapefile::Error),
    #[error("spreadsheet: {0}")]
    Spreadsheet(#[from] calamine::Error),
}

#[derive(Debug, Clone)]
pub struct District {
    pub code: String,
    pub name: String,
    /// Inhabitants per km².
    pub density: f64,
    pub geometry: MultiPolygon<f64>,
    bbox: Rect<f64>,
}

/// All districts, looked up by point-in-polygon.
#[derive(Debug, Clone, Default)]
pub struct NutsIndex {
    districts: Vec<District>,
    /// Free text from the file's `source` member: where the figures come from.
    pub source: Option<String>,
}

/// The district found for a location and the bounds of equation 3.1 it implies.
#[derive(Debug, Clone)]
pub struct DistrictBounds<'a> {
    pub district: Option<&'a District>,
    pub bounds: DistanceBounds,
}

impl NutsIndex {
    pub fn embedded() -> Result<NutsIndex, NutsError> {
        NutsIndex::from_geojson(EMBEDDED_GEOJSON)
    }

    pub fn load(path: &Path) -> Result<NutsIndex, NutsError> {
        let text = fs::read_to_string(path).map_err(|source| NutsError::Io {
            path: path.to_owned(),
            source,
        })?;
        NutsIndex::from_geojson(&text)
    }

    pub fn from_geojson(text: &str) -> Result<NutsIndex, NutsError> {
        let collection = geojson::FeatureCollection::try_from(
            text.parse::<geojson::GeoJson>().map_err(Box::new)?,
        )
        .map_err(Box::new)?;
        let source = collection
            .foreign_members
            .as_ref()
            .and_then(|m| m.get("source"))
            .and_then(Value::as_str)
            .map(str::to_owned);
        let mut districts = Vec::with_capacity(collection.features.len());
        for (index, feature) in collection.features.into_iter().enumerate() {
            let err = |message: String| NutsError::Feature { index, message };
            let code = feature
                .property("nuts3")
                .and_then(Value::as_str)
                .ok_or_else(|| err("property nuts3 (string) is missing".into()))?
                .to_owned();
            let density = feature
                .property("density")
                .and_then(Value::as_f64)
                .filter(|d| d.is_finite() && *d >= 0.0)
                .ok_or_else(|| err(format!("{code}: property density (number ≥ 0) is missing")))?;
            let name = feature
                .property("name")
                .and_then(Value::as_str)
                .unwrap_or(&code)
                .to_owned();
            let geometry = feature
                .geometry
                .ok_or_else(|| err(format!("{code}: no geometry")))?;
            let geometry = match geo::Geometry::<f64>::try_from(geometry)
                .map_err(|e| err(format!("{code}: {e}")))?
            {
                geo::Geometry::Polygon(p) => MultiPolygon(vec![p]),
                geo::Geometry::MultiPolygon(mp) => mp,
                _ => return Err(err(format!("{code}: geometry is not a (multi)polygon"))),
            };
            let bbox = geometry
                .bounding_rect()
                .ok_or_else(|| err(format!("{code}: empty geometry")))?;
            districts.push(District {
                code,
                name,
                density,
                geometry,
                bbox,
            });
        }
        Ok(NutsIndex { districts, source })
    }

    pub fn len(&self) -> usize {
        self.districts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.districts.is_empty()
    }

    pub fn districts(&self) -> &[District] {
        &self.districts
    }

    pub fn lookup(&self, location: Location) -> Option<&District> {
        let point = Point::new(location.longitude, location.latitude);
        self.districts
            .iter()
            .find(|d| d.bbox.intersects(&point) && d.geometry.intersects(&point))
    }

    /// Bounds for a household's location; outside every district (or without a location)
    /// the most conservative bounds apply, so the real location is never kept.
    pub fn bounds_for(&self, location: Option<Location>) -> DistrictBounds<'_> {
        match location.and_then(|l| self.lookup(l)) {
            Some(district) => DistrictBounds {
                district: Some(district),
                bounds: DistanceBounds::for_density(district.density),
            },
            None => DistrictBounds {
                district: None,
                bounds: DistanceBounds::MOST_CONSERVATIVE,
            },
        }
    }
}

/// Official figures for one district, as read from the density file.
#[derive(Debug, Clone, PartialEq)]
pub struct DistrictFigures {
    pub name: Option<String>,
    pub density: f64,
    pub population: Option<f64>,
    pub area_km2: Option<f64>,
}

/// Outcome of `nuts import`.
#[derive(Debug, Clone, Default)]
pub struct ImportReport {
    pub districts: usize,
    /// Codes with a boundary but no density (left out).
    pub without_density: Vec<String>,
    /// Codes with a density but no boundary (left out).
    pub without_boundary: Vec<String>,
}

/// Builds the server's GeoJSON from official boundary and density files.
pub fn import(
    boundaries: &Path,
    densities: &Path,
    source_note: &str,
    out: &Path,
) -> Result<ImportReport, NutsError> {
    let shapes = read_boundaries(boundaries)?;
    let figures = read_densities(densities)?;
    let mut report = ImportReport::default();
    let mut features = Vec::new();
    for (code, geometry) in &shapes {
        let Some(f) = figures.get(code) else {
            report.without_density.push(code.clone());
            continue;
        };
        // 6 decimals are ~0.1 m, far below the sources' own generalization.
        let rounded = geometry.map_coords(|c| geo::Coord {
            x: (c.x * 1e6).round() / 1e6,
            y: (c.y * 1e6).round() / 1e6,
        });
        let mut properties = Map::new();
        properties.insert("nuts3".into(), json!(code));
        properties.insert(
            "name".into(),
            json!(f.name.clone().unwrap_or_else(|| code.clone())),
        );
        properties.insert("density".into(), json!(f.density));
        if let Some(p) = f.population {
            properties.insert("population".into(), json!(p));
        }
        if let Some(a) = f.area_km2 {
            properties.insert("area_km2".into(), json!(a));
        }
        features.push(json!({
            "type": "Feature",
            "properties": properties,
            "geometry": geojson::Geometry::from(&rounded),
        }));
    }
    report.without_boundary = figures
        .keys()
        .filter(|code| !shapes.contains_key(*code))
        .cloned()
        .collect();
    report.districts = features.len();
    let collection = json!({
        "type": "FeatureCollection",
        "source": source_note,
        "features": features,
    });
    let text = serde_json::to_string(&collection).map_err(|e| NutsError::Source {
        path: out.to_owned(),
        message: e.to_string(),
    })?;
    fs::write(out, text).map_err(|source| NutsError::Io {
        path: out.to_owned(),
        source,
    })?;
    Ok(report)
}

fn source_err(path: &Path, message: impl Into<String>) -> NutsError {
    NutsError::Source {
        path: path.to_owned(),
        message: message.into(),
    }
}

fn is_nuts3_code(s: &str) -> bool {
    s.len() == 5 && s.starts_with("DE") && s[2..].chars().all(|c| c.is_ascii_alphanumeric())
}

/// District polygons by NUTS-3 code; parts of one district (islands, enclaves, water
/// areas) are merged.
pub fn read_boundaries(path: &Path) -> Result<BTreeMap<String, MultiPolygon<f64>>, NutsError> {
    let extension = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    let mut out: BTreeMap<String, MultiPolygon<f64>> = BTreeMap::new();
    match extension.as_deref() {
        Some("shp") => {
            check_geographic_projection(path)?;
            let mut reader = shapefile::Reader::from_path(path)?;
            for entry in reader.iter_shapes_and_records() {
                let (shape, record) = entry?;
                let code = ["NUTS", "NUTS_CODE", "NUTS_ID", "NUTS3"]
                    .iter()
                    .find_map(|field| match record.get(field) {
                        Some(shapefile::dbase::FieldValue::Character(Some(s))) => {
                            Some(s.trim().to_owned())
                        }
                        _ => None,
                    })
                    .ok_or_else(|| {
                        source_err(path, "records need a NUTS, NUTS_CODE or NUTS_ID field")
                    })?;
                if !is_nuts3_code(&code) {
                    continue;
                }
                let geometry = match geo::Geometry::<f64>::try_from(shape) {
                    Ok(geo::Geometry::MultiPolygon(mp)) => mp,
                    Ok(geo::Geometry::Polygon(p)) => MultiPolygon(vec![p]),
                    _ => return Err(source_err(path, format!("{code}: not a polygon shape"))),
                };
                check_coordinates(path, &code, &geometry)?;
                out.entry(code)
                    .or_insert_with(|| MultiPolygon(vec![]))
                    .0
                    .extend(geometry.0);
            }
        }
        Some("geojson" | "json") => {
            let text = fs::read_to_string(path).map_err(|source| NutsError::Io {
                path: path.to_owned(),
                source,
            })?;
            let collection = geojson::FeatureCollection::try_from(
                text.parse::<geojson::GeoJson>().map_err(Box::new)?,
            )
            .map_err(Box::new)?;
            for feature in collection.features {
                let code = ["NUTS_ID", "NUTS", "NUTS_CODE", "nuts3"]
                    .iter()
                    .find_map(|p| feature.property(p).and_then(Value::as_str))
                    .map(str::to_owned);
                let Some(code) = code.filter(|c| is_nuts3_code(c)) else {
                    continue;
                };
                let Some(geometry) = feature.geometry else {
                    continue;
                };
                let geometry = match geo::Geometry::<f64>::try_from(geometry) {
                    Ok(geo::Geometry::MultiPolygon(mp)) => mp,
                    Ok(geo::Geometry::Polygon(p)) => MultiPolygon(vec![p]),
                    _ => return Err(source_err(path, format!("{code}: not a polygon"))),
                };
                check_coordinates(path, &code, &geometry)?;
                out.entry(code)
                    .or_insert_with(|| MultiPolygon(vec![]))
                    .0
                    .extend(geometry.0);
            }
        }
        _ => {
            return Err(source_err(
                path,
                "boundaries must be a shapefile (.shp with .dbf beside it) or GeoJSON",
            ))
        }
    }
    if out.is_empty() {
        return Err(source_err(path, "no German NUTS-3 district found"));
    }
    Ok(out)
}

/// BKG ships its files in several reference systems; only geographic coordinates
/// (WGS 84 / ETRS89, which agree to within a metre) can be used without reprojection.
fn check_geographic_projection(shp: &Path) -> Result<(), NutsError> {
    let prj = shp.with_extension("prj");
    if let Ok(text) = fs::read_to_string(&prj) {
        if text.trim_start().starts_with("PROJCS") {
            return Err(source_err(
                &prj,
                "projected coordinates (e.g. UTM32); use BKG's geographic variant \
                 (EPSG:4326 or EPSG:4258) of the file",
            ));
        }
    }
    Ok(())
}

fn check_coordinates(
    path: &Path,
    code: &str,
    geometry: &MultiPolygon<f64>,
) -> Result<(), NutsError> {
    match geometry.bounding_rect() {
        Some(r)
            if r.min().x >= -180.0
                && r.max().x <= 180.0
                && r.min().y >= -90.0
                && r.max().y <= 90.0 =>
        {
            Ok(())
        }
        _ => Err(source_err(
            path,
            format!("{code}: coordinates are not longitude/latitude degrees"),
        )),
    }
}

/// Densities by NUTS-3 code from Destatis' `04-kreise.xlsx` (Gemeindeverzeichnis,
/// "Kreisfreie Städte und Landkreise nach Fläche, Bevölkerung und Bevölkerungsdichte")
/// or from a CSV with a header naming `nuts3` and `density` (and optionally `name`).
pub fn read_densities(path: &Path) -> Result<BTreeMap<String, DistrictFigures>, NutsError> {
    let extension = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    let figures = match extension.as_deref() {
        Some("xlsx" | "xls" | "ods") => read_destatis_workbook(path)?,
        Some("csv") => read_density_csv(path)?,
        _ => {
            return Err(source_err(
                path,
                "densities must be Destatis' .xlsx or a .csv",
            ))
        }
    };
    if figures.is_empty() {
        return Err(source_err(path, "no NUTS-3 density found"));
    }
    Ok(figures)
}

fn read_destatis_workbook(path: &Path) -> Result<BTreeMap<String, DistrictFigures>, NutsError> {
    use calamine::{open_workbook_auto, Data, Reader};
    let mut workbook = open_workbook_auto(path)?;
    let text = |cell: &Data| match cell {
        Data::String(s) => s.trim().to_owned(),
        other => other.to_string(),
    };
    let number = |cell: &Data| match cell {
        Data::Float(f) => Some(*f),
        Data::Int(i) => Some(*i as f64),
        Data::String(s) => s.trim().replace(',', ".").parse().ok(),
        _ => None,
    };
    for sheet in workbook.sheet_names() {
        let range = workbook.worksheet_range(&sheet)?;
        let rows: Vec<&[Data]> = range.rows().collect();
        // The header is two rows: "NUTS3", "Fläche in km2", "Bevölkerung" above
        // "insgesamt", "männlich", "weiblich", "je km2".
        let Some((header_row, nuts_col)) = rows.iter().enumerate().find_map(|(i, row)| {
            row.iter()
                .position(|c| text(c) == "NUTS3")
                .map(|col| (i, col))
        }) else {
            continue;
        };
        let header: Vec<String> = rows[header_row..(header_row + 2).min(rows.len())]
            .iter()
            .map(|row| row.iter().map(text).collect::<Vec<_>>().join("|"))
            .collect();
        let find = |needle: &str| -> Option<usize> {
            rows[header_row..(header_row + 2).min(rows.len())]
                .iter()
                .find_map(|row| {
                    row.iter()
                        .position(|c| text(c).to_lowercase().contains(needle))
                })
        };
        let density_col = find("je km").ok_or_else(|| {
            source_err(
                path,
                format!("no 'je km2' density column in header {header:?}"),
            )
        })?;
        let population_col = find("insgesamt");
        let area_col = find("fläche");
        let mut out = BTreeMap::new();
        for row in &rows[header_row + 1..] {
            let Some(code) = row.get(nuts_col).map(text) else {
                continue;
            };
            if !is_nuts3_code(&code) {
                continue;
            }
            let Some(density) = row.get(density_col).and_then(number) else {
                continue;
            };
            let name = nuts_col
                .checked_sub(1)
                .and_then(|c| row.get(c))
                .map(text)
                .filter(|s| !s.is_empty());
            out.insert(
                code,
                DistrictFigures {
                    name,
                    density,
                    population: population_col.and_then(|c| row.get(c)).and_then(number),
                    area_km2: area_col.and_then(|c| row.get(c)).and_then(number),
                },
            );
        }
        if !out.is_empty() {
            return Ok(out);
        }
    }
    Err(source_err(path, "no sheet with a NUTS3 column"))
}

fn read_density_csv(path: &Path) -> Result<BTreeMap<String, DistrictFigures>, NutsError> {
    let text = fs::read_to_string(path).map_err(|source| NutsError::Io {
        path: path.to_owned(),
        source,
    })?;
    let separator = if text.lines().next().is_some_and(|l| l.contains(';')) {
        ';'
    } else {
        ','
    };
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let header: Vec<String> = lines
        .next()
        .ok_or_else(|| source_err(path, "empty file"))?
        .split(separator)
        .map(|h| h.trim().trim_matches('"').to_lowercase())
        .collect();
    let column = |name: &str| header.iter().position(|h| h == name);
    let (Some(code_col), Some(density_col)) = (column("nuts3"), column("density")) else {
        return Err(source_err(
            path,
            "header must name the columns nuts3 and density",
        ));
    };
    let name_col = column("name");
    let mut out = BTreeMap::new();
    for (line_no, line) in lines.enumerate() {
        let cells: Vec<&str> = line
            .split(separator)
            .map(|c| c.trim().trim_matches('"'))
            .collect();
        let code = cells.get(code_col).copied().unwrap_or_default();
        let density = cells
            .get(density_col)
            .and_then(|d| d.parse::<f64>().ok())
            .filter(|d| d.is_finite() && *d >= 0.0)
            .ok_or_else(|| {
                source_err(
                    path,
                    format!("line {}: density is not a number ≥ 0", line_no + 2),
                )
            })?;
        out.insert(
            code.to_owned(),
            DistrictFigures {
                name: name_col.and_then(|c| cells.get(c)).map(|s| s.to_string()),
                density,
                population: None,
                area_km2: None,
            },
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn square_collection() -> String {
        json!({
            "type": "FeatureCollection",
            "source": "test",
            "features": [{
                "type": "Feature",
                "properties": {"nuts3": "DEX01", "name": "Test", "density": 1000.0},
                "geometry": {"type": "Polygon", "coordinates": [[[10.0,50.0],[11.0,50.0],[11.0,51.0],[10.0,51.0],[10.0,50.0]]]}
            }]
        })
        .to_string()
    }

    #[test]
    fn lookup_and_bounds() {
        let index = NutsIndex::from_geojson(&square_collection()).unwrap();
        assert_eq!(index.source.as_deref(), Some("test"));
        let inside = Location {
            latitude: 50.5,
            longitude: 10.5,
        };
        let outside = Location {
            latitude: 52.5,
            longitude: 13.4,
        };
        assert_eq!(index.lookup(inside).unwrap().code, "DEX01");
        assert!(index.lookup(outside).is_none());
        let b = index.bounds_for(Some(inside));
        assert_eq!(b.bounds, DistanceBounds::for_density(1000.0));
        let b = index.bounds_for(Some(outside));
        assert!(b.district.is_none());
        assert_eq!(b.bounds, DistanceBounds::MOST_CONSERVATIVE);
        assert_eq!(
            index.bounds_for(None).bounds,
            DistanceBounds::MOST_CONSERVATIVE
        );
    }

    #[test]
    fn malformed_features_are_named() {
        let bad = square_collection().replace("\"density\":1000.0", "\"density\":\"x\"");
        let err = NutsIndex::from_geojson(&bad).unwrap_err().to_string();
        assert!(
            err.contains("feature 0") && err.contains("density"),
            "{err}"
        );
    }
}
