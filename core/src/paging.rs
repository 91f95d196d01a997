//! Pages of a list answer, as Google's API guide spells them (`page_size`, `page_token`,
//! `next_page_token`): items in name order, at most a page size of them and never more bytes
//! than a client's message limit, and an opaque token to resume after the last one.

use thiserror::Error;

/// Items per page when the request gives no page size.
pub const DEFAULT_PAGE_SIZE: usize = 500;
/// The largest page size honoured; a larger request gets this many.
pub const MAX_PAGE_SIZE: usize = 1000;
/// A page stops before its items reach this many encoded bytes (below the 4 MiB that gRPC
/// clients such as grpcurl accept by default), whatever its page size.
pub const MAX_PAGE_BYTES: usize = 3 << 20;

/// Prefix of hutch's page tokens (format 1: the hex of the last name on the page).
const TOKEN_PREFIX: &str = "p1.";

/// A page token that no answer gave.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("page_token: '{0}' is not a next_page_token of an earlier answer (leave it empty for the first page)")]
pub struct BadPageToken(pub String);

/// One page of a list.
#[derive(Debug, PartialEq, Eq)]
pub struct Page<T> {
    /// The items, in name order.
    pub items: Vec<T>,
    /// The token of the next page; empty on the last page.
    pub next_page_token: String,
}

/// The page of `items` (name and item; any order) that `page_size` and `page_token` ask
/// for; `encoded_len` tells an item's size on the wire.
pub fn page<K: AsRef<str>, T>(
    mut items: Vec<(K, T)>,
    page_size: u32,
    page_token: &str,
    encoded_len: impl Fn(&T) -> usize,
) -> Result<Page<T>, BadPageToken> {
    if let Some(after) = resume_after(page_token)? {
        items.retain(|(name, _)| name.as_ref() > after.as_str());
    }
    // Only the first `limit` names and the one after them (it says whether more follow) need
    // an order: picked in linear time, sorted among themselves (a page of 1,000 among
    // 100,000 sorts 1,001).
    let limit = limit(page_size);
    let by_name = |a: &(K, T), b: &(K, T)| a.0.as_ref().cmp(b.0.as_ref());
    if items.len() > limit + 1 {
        items.select_nth_unstable_by(limit, by_name);
        items.truncate(limit + 1);
    }
    items.sort_unstable_by(by_name);
    Ok(page_in_order(items, page_size, encoded_len))
}

/// The page that `page_size` asks for from `items`: the items (name and item) that follow
/// the resume point of the request's token ([`resume_after`]), already in name order. Only
/// as many items are read as the page takes, and one more.
pub fn page_in_order<K: AsRef<str>, T>(
    items: impl IntoIterator<Item = (K, T)>,
    page_size: u32,
    encoded_len: impl Fn(&T) -> usize,
) -> Page<T> {
    let limit = limit(page_size);
    let mut page = Vec::new();
    let (mut bytes, mut last, mut more) = (0usize, None, false);
    for (name, item) in items {
        // A length-delimited field: the item, its length and its tag.
        let size = encoded_len(&item) + 8;
        if page.len() == limit || (!page.is_empty() && bytes + size > MAX_PAGE_BYTES) {
            more = true;
            break;
        }
        bytes += size;
        last = Some(name);
        page.push(item);
    }
    Page {
        items: page,
        next_page_token: match (more, last) {
            (true, Some(name)) => token_after(name.as_ref()),
            _ => String::new(),
        },
    }
}

/// Items per page for a request's `page_size` (0 for the default).
fn limit(page_size: u32) -> usize {
    match page_size as usize {
        0 => DEFAULT_PAGE_SIZE,
        n => n.min(MAX_PAGE_SIZE),
    }
}

fn token_after(name: &str) -> String {
    let hex: String = name.bytes().map(|b| format!("{b:02x}")).collect();
    format!("{TOKEN_PREFIX}{hex}")
}

/// The name a page token resumes after (`None` for the first page, an empty token).
pub fn resume_after(token: &str) -> Result<Option<String>, BadPageToken> {
    if token.is_empty() {
        return Ok(None);
    }
    let bad = || BadPageToken(token.chars().take(64).collect());
    let hex = token.strip_prefix(TOKEN_PREFIX).ok_or_else(bad)?;
    if hex.is_empty() || hex.len() % 2 != 0 {
        return Err(bad());
    }
    let bytes = (0..hex.len())
        .step_by(2)
        .map(|i| {
            hex.get(i..i + 2)
                .and_then(|b| u8::from_str_radix(b, 16).ok())
        })
        .collect::<Option<Vec<u8>>>()
        .ok_or_else(bad)?;
    String::from_utf8(bytes).map(Some).map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn named(n: usize) -> Vec<(String, usize)> {
        (0..n).rev().map(|i| (format!("c{i:05}"), i)).collect()
    }

    #[test]
    fn pages_walk_every_item_once_in_order() {
        let mut token = String::new();
        let mut seen = Vec::new();
        loop {
            let p = page(named(1234), 500, &token, |_| 10).expect("page");
            assert!(p.items.len() <= 500);
            seen.extend(p.items);
            if p.next_page_token.is_empty() {
                break;
            }
            token = p.next_page_token;
        }
        assert_eq!(seen, (0..1234).collect::<Vec<_>>());
    }

    #[test]
    fn a_page_is_the_first_names_whatever_the_input_order_and_says_if_more_follow() {
        for n in [0, 1, 9, 10, 11, 12, 257] {
            // Names in a scrambled order (a multiplier coprime to the 263 it wraps at).
            let items: Vec<(String, usize)> = (0..n)
                .map(|i| (i * 97) % 263)
                .map(|i| (format!("c{i:05}"), i))
                .collect();
            let mut expected: Vec<usize> = items.iter().map(|(_, i)| *i).collect();
            expected.sort_unstable();
            let (mut token, mut seen) = (String::new(), Vec::new());
            loop {
                let p = page(items.clone(), 10, &token, |_| 1).expect("page");
                let full = p.items.len() == 10;
                seen.extend(p.items);
                if p.next_page_token.is_empty() {
                    break;
                }
                assert!(full, "a page that is not the last one is full");
                token = p.next_page_token;
            }
            assert_eq!(seen, expected, "{n} items");
        }
    }

    #[test]
    fn sizes_are_defaulted_capped_and_bytes_bounded() {
        assert_eq!(
            page(named(600), 0, "", |_| 1).expect("p").items.len(),
            DEFAULT_PAGE_SIZE
        );
        assert_eq!(
            page(named(2000), u32::MAX, "", |_| 1)
                .expect("p")
                .items
                .len(),
            MAX_PAGE_SIZE
        );
        // 1 MiB items: two fit under the 3 MiB bound, whatever the page size.
        let big = page(named(10), 1000, "", |_| 1 << 20).expect("p");
        assert_eq!(big.items.len(), 2);
        assert!(!big.next_page_token.is_empty());
        // One item larger than the bound still comes, alone.
        let huge = page(named(2), 1000, "", |_| 8 << 20).expect("p");
        assert_eq!(huge.items.len(), 1);
        assert!(page(named(3), 10, "", |_| 1)
            .expect("p")
            .next_page_token
            .is_empty());
    }

    #[test]
    fn tokens_not_made_here_are_refused() {
        for bad in ["x", "p1.", "p1.zz", "p1.abc", "p1.ff", "p2.6161"] {
            assert!(page(named(3), 1, bad, |_| 1).is_err(), "{bad}");
        }
        let first = page(named(3), 1, "", |_| 1).expect("p");
        let second = page(named(3), 1, &first.next_page_token, |_| 1).expect("p");
        assert_eq!((first.items, second.items), (vec![0], vec![1]));
    }
}
