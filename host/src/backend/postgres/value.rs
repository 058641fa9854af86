//! Values across the `sql` import: plugin parameters encoded for the type
//! Postgres inferred for each `$n` (binary format), and result columns
//! decoded from their binary format into JSON. Both sides are explicit
//! tables of types; anything else is refused with a message naming the
//! parameter or column and its type, so a plugin knows what to cast.

use std::fmt::Write as _;

use bytes::BytesMut;
use serde_json::{Number, Value as Json};
use tokio_postgres::types::{FromSql, IsNull, ToSql, Type, to_sql_checked};

/// One bind parameter as the plugin gave it.
#[derive(Debug, Clone, PartialEq)]
pub enum SqlValue {
    /// SQL `NULL`.
    Null,
    /// A boolean.
    Boolean(bool),
    /// A 64-bit integer.
    Int(i64),
    /// A double-precision float.
    Float(f64),
    /// UTF-8 text.
    Text(String),
    /// Bytes.
    Bytes(Vec<u8>),
    /// A JSON document as text.
    Json(String),
}

impl SqlValue {
    /// Bytes this value adds to a call's size (for `sql_max_statement_bytes`).
    pub fn size(&self) -> usize {
        match self {
            SqlValue::Null | SqlValue::Boolean(_) => 1,
            SqlValue::Int(_) | SqlValue::Float(_) => 8,
            SqlValue::Text(s) | SqlValue::Json(s) => s.len(),
            SqlValue::Bytes(b) => b.len(),
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            SqlValue::Null => "null",
            SqlValue::Boolean(_) => "boolean",
            SqlValue::Int(_) => "int",
            SqlValue::Float(_) => "float",
            SqlValue::Text(_) => "text",
            SqlValue::Bytes(_) => "bytes",
            SqlValue::Json(_) => "json",
        }
    }
}

/// A parameter already in Postgres's binary format for its type (`None`:
/// `NULL`). Built by [`encode`], so it accepts whatever type it was made for.
#[derive(Debug, Clone)]
pub struct Encoded(Option<Vec<u8>>);

impl ToSql for Encoded {
    fn to_sql(
        &self,
        _ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match &self.0 {
            None => Ok(IsNull::Yes),
            Some(bytes) => {
                out.extend_from_slice(bytes);
                Ok(IsNull::No)
            }
        }
    }

    fn accepts(_ty: &Type) -> bool {
        true
    }

    to_sql_checked!();
}

/// Encode `value` as parameter `$n` (1-based) of type `ty`.
pub fn encode(n: usize, ty: &Type, value: SqlValue) -> Result<Encoded, String> {
    let refuse = |v: &SqlValue| {
        format!(
            "parameter ${n} has type {ty}, which a {} value cannot be bound to; cast it in the SQL (e.g. ${n}::{})",
            v.kind(),
            match v {
                SqlValue::Int(_) => "int8",
                SqlValue::Float(_) => "float8",
                SqlValue::Boolean(_) => "bool",
                SqlValue::Bytes(_) => "bytea",
                SqlValue::Json(_) => "jsonb",
                _ => "text",
            }
        )
    };
    if let SqlValue::Text(s) | SqlValue::Json(s) = &value
        && s.contains('\0')
    {
        return Err(format!(
            "parameter ${n}: text cannot hold the character U+0000"
        ));
    }
    let bytes = match (&value, ty) {
        (SqlValue::Null, _) => return Ok(Encoded(None)),
        (SqlValue::Boolean(b), &Type::BOOL) => vec![u8::from(*b)],
        (SqlValue::Int(i), &Type::INT2) => i16::try_from(*i)
            .map_err(|_| format!("parameter ${n}: {i} does not fit in int2"))?
            .to_be_bytes()
            .to_vec(),
        (SqlValue::Int(i), &Type::INT4) => i32::try_from(*i)
            .map_err(|_| format!("parameter ${n}: {i} does not fit in int4"))?
            .to_be_bytes()
            .to_vec(),
        (SqlValue::Int(i), &Type::INT8) => i.to_be_bytes().to_vec(),
        (SqlValue::Int(i), &Type::OID) => u32::try_from(*i)
            .map_err(|_| format!("parameter ${n}: {i} is not an oid"))?
            .to_be_bytes()
            .to_vec(),
        // Lossless only: an int the float cannot hold exactly is refused.
        (SqlValue::Int(i), &Type::FLOAT8) => {
            let f = *i as f64;
            if f as i64 != *i || f == 9_223_372_036_854_775_808.0 {
                return Err(format!(
                    "parameter ${n}: {i} is not exact as float8; cast it (${n}::int8)"
                ));
            }
            f.to_be_bytes().to_vec()
        }
        (SqlValue::Int(i), &Type::FLOAT4) => {
            let f = *i as f32;
            if f as i64 != *i || f >= 9.223_372e18 {
                return Err(format!(
                    "parameter ${n}: {i} is not exact as float4; cast it (${n}::int8)"
                ));
            }
            f.to_be_bytes().to_vec()
        }
        (SqlValue::Float(f), &Type::FLOAT8) => f.to_be_bytes().to_vec(),
        (SqlValue::Float(f), &Type::FLOAT4) => (*f as f32).to_be_bytes().to_vec(),
        (
            SqlValue::Text(s),
            &Type::TEXT | &Type::VARCHAR | &Type::BPCHAR | &Type::NAME | &Type::UNKNOWN,
        ) => s.as_bytes().to_vec(),
        (SqlValue::Text(s), &Type::UUID) => parse_uuid(s)
            .ok_or_else(|| format!("parameter ${n}: {s:?} is not a UUID"))?
            .to_vec(),
        (SqlValue::Text(s) | SqlValue::Json(s), &Type::JSON | &Type::JSONB) => {
            if serde_json::from_str::<serde::de::IgnoredAny>(s).is_err() {
                return Err(format!("parameter ${n} is not valid JSON"));
            }
            let mut b = Vec::with_capacity(s.len() + 1);
            if *ty == Type::JSONB {
                // jsonb's binary format: version 1, then the text.
                b.push(1);
            }
            b.extend_from_slice(s.as_bytes());
            b
        }
        (SqlValue::Json(s), &Type::TEXT | &Type::VARCHAR | &Type::UNKNOWN) => s.as_bytes().to_vec(),
        (SqlValue::Bytes(b), &Type::BYTEA) => b.clone(),
        (v, _) => return Err(refuse(v)),
    };
    Ok(Encoded(Some(bytes)))
}

fn parse_uuid(s: &str) -> Option<[u8; 16]> {
    let hex: String = s.chars().filter(|c| *c != '-').collect();
    if hex.len() != 32 || !(s.len() == 32 || s.len() == 36) {
        return None;
    }
    let mut out = [0u8; 16];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// A column's raw binary value (`None`: `NULL`), whatever its type.
pub struct Raw<'a>(pub Option<&'a [u8]>);

impl<'a> FromSql<'a> for Raw<'a> {
    fn from_sql(
        _ty: &Type,
        raw: &'a [u8],
    ) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(Raw(Some(raw)))
    }

    fn from_sql_null(_ty: &Type) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(Raw(None))
    }

    fn accepts(_ty: &Type) -> bool {
        true
    }
}

/// Whether [`decode`] turns columns of `ty` into JSON.
pub fn supported(ty: &Type) -> bool {
    [
        Type::BOOL,
        Type::INT2,
        Type::INT4,
        Type::INT8,
        Type::OID,
        Type::FLOAT4,
        Type::FLOAT8,
        Type::NUMERIC,
        Type::TEXT,
        Type::VARCHAR,
        Type::BPCHAR,
        Type::NAME,
        Type::UNKNOWN,
        Type::JSON,
        Type::JSONB,
        Type::UUID,
        Type::TIMESTAMP,
        Type::TIMESTAMPTZ,
        Type::DATE,
        Type::BYTEA,
        Type::VOID,
    ]
    .contains(ty)
}

fn short(raw: &[u8], ty: &Type) -> String {
    format!("a malformed {ty} value ({} bytes)", raw.len())
}

fn be<const N: usize>(raw: &[u8], ty: &Type) -> Result<[u8; N], String> {
    raw.try_into().map_err(|_| short(raw, ty))
}

/// The JSON of one column value of type `ty` in binary format (see the
/// `query` doc in `wit/plugin.wit` for the mapping).
pub fn decode(ty: &Type, raw: Option<&[u8]>) -> Result<Json, String> {
    let Some(raw) = raw else {
        return Ok(Json::Null);
    };
    Ok(match *ty {
        Type::BOOL => Json::Bool(be::<1>(raw, ty)?[0] != 0),
        Type::INT2 => Json::from(i16::from_be_bytes(be(raw, ty)?)),
        Type::INT4 => Json::from(i32::from_be_bytes(be(raw, ty)?)),
        Type::INT8 => Json::from(i64::from_be_bytes(be(raw, ty)?)),
        Type::OID => Json::from(u32::from_be_bytes(be(raw, ty)?)),
        Type::FLOAT4 => {
            let f = f32::from_be_bytes(be(raw, ty)?);
            // Through its shortest text, so 0.1f32 reads as 0.1.
            float(f.to_string().parse::<f64>().unwrap_or(f64::from(f)))
        }
        Type::FLOAT8 => float(f64::from_be_bytes(be(raw, ty)?)),
        Type::NUMERIC => Json::String(numeric(raw).ok_or_else(|| short(raw, ty))?),
        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::UNKNOWN | Type::JSON => {
            let s = std::str::from_utf8(raw).map_err(|_| short(raw, ty))?;
            if *ty == Type::JSON {
                serde_json::from_str(s).map_err(|_| short(raw, ty))?
            } else {
                Json::String(s.to_owned())
            }
        }
        Type::JSONB => {
            let (version, text) = raw.split_first().ok_or_else(|| short(raw, ty))?;
            if *version != 1 {
                return Err(short(raw, ty));
            }
            serde_json::from_slice(text).map_err(|_| short(raw, ty))?
        }
        Type::UUID => {
            let b = be::<16>(raw, ty)?;
            let h = hex::encode(b);
            Json::String(format!(
                "{}-{}-{}-{}-{}",
                &h[0..8],
                &h[8..12],
                &h[12..16],
                &h[16..20],
                &h[20..32]
            ))
        }
        Type::TIMESTAMP | Type::TIMESTAMPTZ => {
            let micros = i64::from_be_bytes(be(raw, ty)?);
            Json::String(timestamp(micros, *ty == Type::TIMESTAMPTZ))
        }
        Type::DATE => {
            let days = i32::from_be_bytes(be(raw, ty)?);
            Json::String(match days {
                i32::MAX => "infinity".to_owned(),
                i32::MIN => "-infinity".to_owned(),
                d => {
                    let (y, m, d) = civil_from_days(i64::from(d) + PG_EPOCH_DAYS);
                    format!("{y:04}-{m:02}-{d:02}")
                }
            })
        }
        Type::BYTEA => Json::String(format!("\\x{}", hex::encode(raw))),
        Type::VOID => Json::Null,
        _ => return Err(format!("type {ty} is not supported")),
    })
}

fn float(f: f64) -> Json {
    match Number::from_f64(f) {
        Some(n) => Json::Number(n),
        None if f.is_nan() => Json::String("NaN".into()),
        None if f > 0.0 => Json::String("Infinity".into()),
        None => Json::String("-Infinity".into()),
    }
}

/// Postgres's `numeric` binary format as exact decimal text.
fn numeric(raw: &[u8]) -> Option<String> {
    let word = |i: usize| -> Option<u16> {
        Some(u16::from_be_bytes([*raw.get(2 * i)?, *raw.get(2 * i + 1)?]))
    };
    let ndigits = usize::from(word(0)?);
    let weight = i64::from(word(1)? as i16);
    let sign = word(2)?;
    let dscale = usize::from(word(3)?);
    if raw.len() != 8 + 2 * ndigits {
        return None;
    }
    match sign {
        0x0000 | 0x4000 => {}
        0xC000 => return Some("NaN".into()),
        0xD000 => return Some("Infinity".into()),
        0xF000 => return Some("-Infinity".into()),
        _ => return None,
    }
    let digit = |i: i64| -> Option<u16> {
        if i < 0 || i >= ndigits as i64 {
            return Some(0);
        }
        let d = word(4 + i as usize)?;
        (d < 10_000).then_some(d)
    };
    let mut s = String::new();
    if sign == 0x4000 {
        s.push('-');
    }
    if weight < 0 {
        s.push('0');
    } else {
        for i in 0..=weight {
            let d = digit(i)?;
            if i == 0 {
                let _ = write!(s, "{d}");
            } else {
                let _ = write!(s, "{d:04}");
            }
        }
    }
    if dscale > 0 {
        let mut frac = String::with_capacity(dscale + 4);
        let mut i = weight + 1;
        while frac.len() < dscale {
            let _ = write!(frac, "{:04}", digit(i)?);
            i += 1;
        }
        frac.truncate(dscale);
        s.push('.');
        s.push_str(&frac);
    }
    Some(s)
}

/// Days from 1970-01-01 to 2000-01-01, Postgres's epoch.
const PG_EPOCH_DAYS: i64 = 10_957;

/// A timestamp in microseconds since 2000-01-01 as RFC 3339 (`Z` with
/// `utc`, no offset without).
fn timestamp(micros: i64, utc: bool) -> String {
    match micros {
        i64::MAX => return "infinity".into(),
        i64::MIN => return "-infinity".into(),
        _ => {}
    }
    let secs = micros.div_euclid(1_000_000);
    let frac = micros.rem_euclid(1_000_000);
    let days = secs.div_euclid(86_400);
    let tod = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days + PG_EPOCH_DAYS);
    let mut s = format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}",
        tod / 3600,
        tod / 60 % 60,
        tod % 60
    );
    if frac != 0 {
        let _ = write!(s, ".{frac:06}");
    }
    if utc {
        s.push('Z');
    }
    s
}

/// (year, month, day) of a day count since 1970-01-01 (proleptic
/// Gregorian; Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn dates_and_timestamps_are_rfc_3339() {
        assert_eq!(timestamp(0, true), "2000-01-01T00:00:00Z");
        assert_eq!(timestamp(-1, false), "1999-12-31T23:59:59.999999");
        // 2024-02-29T12:34:56.5Z
        let micros = (8825 * 86_400 + 12 * 3600 + 34 * 60 + 56) * 1_000_000 + 500_000;
        assert_eq!(timestamp(micros, true), "2024-02-29T12:34:56.500000Z");
        assert_eq!(timestamp(i64::MAX, true), "infinity");
        assert_eq!(
            decode(&Type::DATE, Some(&(-1i32).to_be_bytes())).unwrap(),
            Json::String("1999-12-31".into())
        );
    }

    #[test]
    fn numerics_are_exact_text() {
        // ndigits, weight, sign, dscale, digits.
        let n = |w: &[u16]| -> Vec<u8> { w.iter().flat_map(|x| x.to_be_bytes()).collect() };
        assert_eq!(numeric(&n(&[2, 0, 0, 2, 123, 4500])).unwrap(), "123.45");
        assert_eq!(numeric(&n(&[1, 0xFFFF, 0x4000, 3, 10])).unwrap(), "-0.001");
        assert_eq!(numeric(&n(&[1, 1, 0, 0, 1])).unwrap(), "10000");
        assert_eq!(numeric(&n(&[0, 0, 0, 0])).unwrap(), "0");
        assert_eq!(numeric(&n(&[0, 0, 0xC000, 0])).unwrap(), "NaN");
        assert!(numeric(&n(&[3, 0, 0, 0, 1])).is_none(), "short");
    }

    #[test]
    fn parameters_refuse_lossy_or_unknown_conversions_naming_the_type() {
        let e = encode(2, &Type::NUMERIC, SqlValue::Int(5)).unwrap_err();
        assert!(e.contains("$2") && e.contains("numeric"), "{e}");
        assert!(encode(1, &Type::INT2, SqlValue::Int(70_000)).is_err());
        assert!(encode(1, &Type::FLOAT8, SqlValue::Int(i64::MAX)).is_err());
        assert!(encode(1, &Type::JSONB, SqlValue::Text("{".into())).is_err());
        assert!(encode(1, &Type::TEXT, SqlValue::Text("a\0b".into())).is_err());
        assert!(encode(1, &Type::UUID, SqlValue::Text("nope".into())).is_err());
        assert!(encode(1, &Type::TIMESTAMPTZ, SqlValue::Null).is_ok());
    }

    proptest! {
        /// Every value a parameter can carry comes back as the same JSON
        /// when Postgres returns it in the same type.
        #[test]
        fn ints_round_trip(i in any::<i64>()) {
            let Encoded(Some(b)) = encode(1, &Type::INT8, SqlValue::Int(i)).unwrap() else { panic!() };
            prop_assert_eq!(decode(&Type::INT8, Some(&b)).unwrap(), Json::from(i));
        }

        #[test]
        fn floats_round_trip_or_become_strings(f in any::<f64>()) {
            let Encoded(Some(b)) = encode(1, &Type::FLOAT8, SqlValue::Float(f)).unwrap() else { panic!() };
            let j = decode(&Type::FLOAT8, Some(&b)).unwrap();
            if f.is_finite() {
                prop_assert_eq!(j.as_f64(), Some(f));
            } else {
                prop_assert!(j.is_string());
            }
        }

        #[test]
        fn text_and_json_round_trip(s in "[^\u{0}]{0,40}", x in any::<i32>()) {
            let Encoded(Some(b)) = encode(1, &Type::TEXT, SqlValue::Text(s.clone())).unwrap() else { panic!() };
            prop_assert_eq!(decode(&Type::TEXT, Some(&b)).unwrap(), Json::String(s.clone()));
            let doc = serde_json::json!({"s": s, "x": x});
            let Encoded(Some(b)) = encode(1, &Type::JSONB, SqlValue::Json(doc.to_string())).unwrap() else { panic!() };
            prop_assert_eq!(decode(&Type::JSONB, Some(&b)).unwrap(), doc);
        }

        #[test]
        fn uuids_round_trip(bytes in any::<[u8; 16]>()) {
            let text = decode(&Type::UUID, Some(&bytes)).unwrap();
            let Encoded(Some(b)) = encode(1, &Type::UUID, SqlValue::Text(text.as_str().unwrap().into())).unwrap() else { panic!() };
            prop_assert_eq!(b, bytes.to_vec());
        }

        #[test]
        fn timestamps_never_panic_and_look_rfc_3339(m in any::<i64>()) {
            let s = timestamp(m, true);
            prop_assert!(s.ends_with('Z') || s.contains("infinity"));
        }
    }
}
