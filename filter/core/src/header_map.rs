//! A header map as a proxy-wasm host hands it over (`proxy_get_header_map_pairs`), read where
//! it lies: the request's headers cost the filter one buffer, where the SDK's reading costs two
//! allocations and two copies per header. A request the worker remembers allowing is answered
//! from this view alone (see `protocol::hits`).
//!
//! The layout (proxy-wasm ABI): the number of pairs, then each pair's name length and value
//! length, all `u32` little endian; then each name and each value, each followed by a NUL.

use std::fmt;

/// A serialized header map whose every length was checked against its buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeaderMap<'a> {
    /// Each pair's name and value lengths, 8 bytes a pair.
    table: &'a [u8],
    /// The names and values, each followed by its NUL.
    data: &'a [u8],
}

/// Why bytes are not a serialized header map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MalformedMap {
    /// A count or a length points past the buffer's end.
    Truncated,
    /// A name or a value is not followed by its NUL.
    Unterminated,
    /// Bytes are left after the last pair.
    TrailingBytes,
}

impl fmt::Display for MalformedMap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MalformedMap::Truncated => "a header map's count or length points past its end",
            MalformedMap::Unterminated => "a header map's name or value is not NUL-terminated",
            MalformedMap::TrailingBytes => "a header map has bytes after its last pair",
        })
    }
}

impl std::error::Error for MalformedMap {}

fn u32_at(bytes: &[u8], at: usize) -> Option<usize> {
    let word = bytes.get(at..at.checked_add(4)?)?.first_chunk::<4>()?;
    usize::try_from(u32::from_le_bytes(*word)).ok()
}

/// A table entry's name and value lengths.
fn lengths(&[n0, n1, n2, n3, v0, v1, v2, v3]: &[u8; 8]) -> (usize, usize) {
    (u32::from_le_bytes([n0, n1, n2, n3]) as usize, u32::from_le_bytes([v0, v1, v2, v3]) as usize)
}

impl<'a> HeaderMap<'a> {
    /// Checks `bytes` once, so that reading the pairs never fails. No bytes at all is the empty
    /// map (a host that has no pairs to give may hand over nothing).
    ///
    /// # Errors
    /// [`MalformedMap`] for anything that is not exactly one serialized map: a host that wrote
    /// something else is not read one way or another.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, MalformedMap> {
        if bytes.is_empty() {
            return Ok(HeaderMap { table: &[], data: &[] });
        }
        let count = u32_at(bytes, 0).ok_or(MalformedMap::Truncated)?;
        let table_len = count.checked_mul(8).ok_or(MalformedMap::Truncated)?;
        let (table, data) =
            bytes.get(4..).unwrap_or_default().split_at_checked(table_len).ok_or(MalformedMap::Truncated)?;
        let mut rest = data;
        for entry in table.chunks_exact(8) {
            let (name_len, value_len) = entry.first_chunk::<8>().map(lengths).unwrap_or_default();
            for len in [name_len, value_len] {
                match rest.split_at_checked(len).map(|(_, after)| after.split_first()) {
                    Some(Some((0, after))) => rest = after,
                    Some(Some(_)) => return Err(MalformedMap::Unterminated),
                    Some(None) | None => return Err(MalformedMap::Truncated),
                }
            }
        }
        if !rest.is_empty() {
            return Err(MalformedMap::TrailingBytes);
        }
        Ok(HeaderMap { table, data })
    }

    /// The number of pairs.
    pub fn len(&self) -> usize {
        self.table.len() / 8
    }

    /// Whether it has no pairs.
    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// The pairs, in the host's order.
    pub fn pairs(&self) -> Pairs<'a> {
        Pairs { table: self.table, data: self.data }
    }

    /// The map's bytes in runs of consecutive pairs `keep` says yes to (given each name): for
    /// each run, its stretch of the lengths table and its stretch of the names and values
    /// (NULs included). The kept pairs are exactly the concatenation of the tables and the
    /// concatenation of the data; reading whole stretches at a time is much cheaper than
    /// reading field by field.
    pub fn runs<F: Fn(&[u8]) -> bool>(&self, keep: F) -> Runs<'a, F> {
        Runs { map: *self, pairs: self.pairs(), keep }
    }
}

/// The pairs of a [`HeaderMap`]: (name, value), as bytes.
#[derive(Debug, Clone)]
pub struct Pairs<'a> {
    table: &'a [u8],
    data: &'a [u8],
}

impl<'a> Iterator for Pairs<'a> {
    type Item = (&'a [u8], &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        let (entry, table) = self.table.split_first_chunk::<8>()?;
        let (name_len, value_len) = lengths(entry);
        // In bounds and NUL-terminated: the map was parsed.
        let (name, rest) = self.data.split_at_checked(name_len)?;
        let (value, rest) = rest.get(1..)?.split_at_checked(value_len)?;
        (self.table, self.data) = (table, rest.get(1..)?);
        Some((name, value))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.table.len() / 8, Some(self.table.len() / 8))
    }
}

/// A run of consecutive kept pairs of a [`HeaderMap`] (see [`HeaderMap::runs`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Run<'a> {
    /// Their name and value lengths, as the map's table holds them.
    pub table: &'a [u8],
    /// Their names and values, each followed by its NUL.
    pub data: &'a [u8],
}

/// The runs of [`HeaderMap::runs`].
#[derive(Debug, Clone)]
pub struct Runs<'a, F> {
    map: HeaderMap<'a>,
    pairs: Pairs<'a>,
    keep: F,
}

impl<'a, F: Fn(&[u8]) -> bool> Runs<'a, F> {
    /// Where the pairs still to read begin: in the table, and in the data.
    fn at(&self) -> (usize, usize) {
        (self.map.table.len() - self.pairs.table.len(), self.map.data.len() - self.pairs.data.len())
    }
}

impl<'a, F: Fn(&[u8]) -> bool> Iterator for Runs<'a, F> {
    type Item = Run<'a>;

    fn next(&mut self) -> Option<Run<'a>> {
        let (first, start) = loop {
            let at = self.at();
            let (name, _) = self.pairs.next()?;
            if (self.keep)(name) {
                break at;
            }
        };
        let mut end = self.at();
        // The pair that ends the run is not kept: it is passed over with it.
        while let Some((name, _)) = self.pairs.next() {
            if !(self.keep)(name) {
                break;
            }
            end = self.at();
        }
        let table = self.map.table.get(first..end.0).unwrap_or_default();
        Some(Run { table, data: self.map.data.get(start..end.1).unwrap_or_default() })
    }
}

/// `pairs` serialized as a host hands a map over (what [`HeaderMap::parse`] reads). A name or
/// value of 4 GiB or more (no header is) gets a wrong length, which [`HeaderMap::parse`] refuses.
pub fn serialize<N: AsRef<[u8]>, V: AsRef<[u8]>>(pairs: &[(N, V)]) -> Vec<u8> {
    let mut out = Vec::new();
    serialize_into(pairs.iter().map(|(n, v)| (n.as_ref(), v.as_ref())), &mut out);
    out
}

/// [`serialize`], appended to `out` in one exactly sized write, from pairs read twice (lengths,
/// then bytes): a host that keeps `out` from one request to the next allocates nothing once it
/// has grown to a request's size.
pub fn serialize_into<'a, I>(pairs: I, out: &mut Vec<u8>)
where
    I: Iterator<Item = (&'a [u8], &'a [u8])> + Clone,
{
    let len32 = |n: usize| u32::try_from(n).unwrap_or(u32::MAX).to_le_bytes();
    let (count, data) = pairs.clone().fold((0_usize, 0_usize), |(count, data), (name, value)| {
        (count + 1, data.saturating_add(name.len()).saturating_add(value.len()).saturating_add(2))
    });
    out.reserve(count.saturating_mul(8).saturating_add(4).saturating_add(data));
    out.extend_from_slice(&len32(count));
    for (name, value) in pairs.clone() {
        out.extend_from_slice(&len32(name.len()));
        out.extend_from_slice(&len32(value.len()));
    }
    for (name, value) in pairs {
        for field in [name, value] {
            out.extend_from_slice(field);
            out.push(0);
        }
    }
}

#[cfg(test)]
mod tests {
    #[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    #[test]
    fn pairs_read_back_in_order() {
        let sent: &[(&[u8], &[u8])] = &[
            (b":path", b"/x"),
            (b"authorization", b"Bearer a"),
            (b"cookie", b""),
            (b"x-bin", b"\xff\x00v"),
            (b"cookie", b"b=2"),
        ];
        let bytes = serialize(sent);
        let map = HeaderMap::parse(&bytes).unwrap();
        assert_eq!(map.len(), 5);
        assert_eq!(map.pairs().collect::<Vec<_>>(), sent);
        assert!(HeaderMap::parse(&[]).unwrap().is_empty());
        assert!(HeaderMap::parse(&serialize::<&str, &str>(&[])).unwrap().is_empty());
    }

    #[test]
    fn runs_are_the_kept_pairs_end_to_end() {
        let names = ["a", "x", "b", "c", "x", "x", "d"];
        let pairs: Vec<(&str, String)> = names.iter().enumerate().map(|(i, n)| (*n, "v".repeat(i))).collect();
        let bytes = serialize(&pairs);
        let map = HeaderMap::parse(&bytes).unwrap();
        for skipped in [&[][..], &["x"], &["x", "a"], &["d"], &["a", "b", "c", "d", "x"]] {
            let skips = |name: &[u8]| skipped.iter().any(|s| s.as_bytes() == name);
            let runs: Vec<Run<'_>> = map.runs(|name| !skips(name)).collect();
            let kept: Vec<_> = pairs.iter().filter(|(n, _)| !skips(n.as_bytes())).cloned().collect();
            let whole = serialize(&kept);
            let (table, data) = whole[4..].split_at(kept.len() * 8);
            assert_eq!(runs.iter().flat_map(|r| r.table.to_vec()).collect::<Vec<_>>(), table, "{skipped:?}");
            assert_eq!(runs.iter().flat_map(|r| r.data.to_vec()).collect::<Vec<_>>(), data, "{skipped:?}");
            assert!(runs.iter().all(|r| !r.table.is_empty()), "no empty run");
        }
        assert_eq!(map.runs(|_| true).count(), 1);
    }

    #[test]
    fn anything_but_one_whole_map_is_refused() {
        let bytes = serialize(&[("a", "1"), ("bb", "22")]);
        for cut in 1..bytes.len() {
            assert!(HeaderMap::parse(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(HeaderMap::parse(&longer), Err(MalformedMap::TrailingBytes));
        let mut count = bytes.clone();
        count[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(HeaderMap::parse(&count), Err(MalformedMap::Truncated));
        let mut length = bytes.clone();
        length[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(HeaderMap::parse(&length), Err(MalformedMap::Truncated));
        // A name one byte longer swallows its NUL: the value's terminator is then misplaced.
        let mut shifted = bytes.clone();
        shifted[4] = 2;
        assert_eq!(HeaderMap::parse(&shifted), Err(MalformedMap::Unterminated));
        let mut unterminated = bytes;
        let at = unterminated.len() - 1;
        unterminated[at] = b'x';
        assert_eq!(HeaderMap::parse(&unterminated), Err(MalformedMap::Unterminated));
    }
}
