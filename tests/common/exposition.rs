//! A scrape of the Prometheus text exposition, for tests that check exact values.

use std::collections::BTreeMap;

/// The samples (series with labels → value as written) and family types of one scrape.
pub struct Scrape {
    /// `name{labels}` → the value's text.
    pub series: BTreeMap<String, String>,
    /// Family name → its `# TYPE`.
    pub types: BTreeMap<String, String>,
}

impl Scrape {
    /// Parses an exposition.
    pub fn parse(text: &str) -> Self {
        let mut series = BTreeMap::new();
        let mut types = BTreeMap::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').expect("a TYPE line");
                types.insert(name.to_owned(), kind.to_owned());
            } else if !line.starts_with('#') && !line.is_empty() {
                let (name, value) = line.rsplit_once(' ').expect("a sample line");
                series.insert(name.to_owned(), value.to_owned());
            }
        }
        Self { series, types }
    }

    /// The value of one series, which must exist.
    pub fn value(&self, key: &str) -> f64 {
        let text = self.series.get(key).unwrap_or_else(|| {
            panic!(
                "missing series {key}; have: {:#?}",
                self.series.keys().collect::<Vec<_>>()
            )
        });
        text.parse().expect("a number")
    }

    /// The sum of the series of `family` whose labels contain every one of `filters`.
    pub fn sum(&self, family: &str, filters: &[&str]) -> f64 {
        self.matching(family, filters)
            .map(|v| v.parse::<f64>().expect("a number"))
            .sum()
    }

    /// The exact nano-dollars of a money family, rendered with nine decimals.
    pub fn nanodollars(&self, family: &str) -> u64 {
        self.nanodollars_where(family, &[])
    }

    /// [`Self::nanodollars`] of the series whose labels contain every one of `filters`.
    pub fn nanodollars_where(&self, family: &str, filters: &[&str]) -> u64 {
        self.matching(family, filters)
            .map(|v| {
                let (whole, fraction) = v.split_once('.').expect("decimal dollars");
                assert_eq!(fraction.len(), 9, "{v}");
                whole.parse::<u64>().expect("dollars") * 1_000_000_000
                    + fraction.parse::<u64>().expect("nano-dollars")
            })
            .sum()
    }

    fn matching<'a>(
        &'a self,
        family: &'a str,
        filters: &'a [&str],
    ) -> impl Iterator<Item = &'a String> {
        self.series
            .iter()
            .filter(move |(name, _)| {
                let of_family = name.as_str() == family
                    || name
                        .strip_prefix(family)
                        .is_some_and(|rest| rest.starts_with('{'));
                of_family && filters.iter().all(|f| name.contains(f))
            })
            .map(|(_, v)| v)
    }
}
