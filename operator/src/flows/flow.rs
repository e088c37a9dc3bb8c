//! A flow as a value, its cookie, a bridge's whole table, and the diff between two sets of
//! flows.

use std::fmt::{self, Write as _};
use std::hash::Hasher;

/// Marks a cookie as portiso's: the top byte. The rest is a hash of the flow itself, so a
/// flow's cookie names it exactly: after a restart the agent recomputes the same cookies and
/// finds nothing to change, and one flow can be deleted by its cookie alone.
const COOKIE_TAG: u64 = 0x70 << 56;
const COOKIE_HASH_BITS: u64 = (1 << 56) - 1;

/// One OpenFlow entry, written as `ovs-ofctl` reads it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Flow {
    pub table: u8,
    pub priority: u16,
    /// Match fields, comma-separated, as ovs-ofctl takes them (may be empty: match all).
    pub matches: String,
    pub actions: String,
}

impl Flow {
    pub fn new(
        table: u8,
        priority: u16,
        matches: impl Into<String>,
        actions: impl Into<String>,
    ) -> Self {
        Self {
            table,
            priority,
            matches: matches.into(),
            actions: actions.into(),
        }
    }

    /// The same flow, borrowed: what a `FlowTable` hands out.
    pub fn as_flow_ref(&self) -> FlowRef<'_> {
        FlowRef {
            table: self.table,
            priority: self.priority,
            matches: &self.matches,
            actions: &self.actions,
        }
    }

    /// A stable 64-bit cookie derived from the whole flow (see `FlowRef::cookie`).
    pub fn cookie(&self) -> u64 {
        self.as_flow_ref().cookie()
    }
}

impl fmt::Display for Flow {
    /// The flow as an `ovs-ofctl add-flow` argument, cookie excluded.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.as_flow_ref().fmt(f)
    }
}

/// A flow whose text lives elsewhere, in a `FlowTable` or a `Flow`. Ordered like `Flow`
/// (table, priority, matches, actions): the order of a table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FlowRef<'a> {
    pub table: u8,
    pub priority: u16,
    /// Match fields, comma-separated, as ovs-ofctl takes them (may be empty: match all).
    pub matches: &'a str,
    pub actions: &'a str,
}

impl FlowRef<'_> {
    /// A stable 64-bit cookie derived from the whole flow: FNV-1a (stable across builds,
    /// unlike std's hasher) of its `Display` text. The text is fed to the hasher as it is
    /// written, so no string is built.
    pub fn cookie(&self) -> u64 {
        let mut h = FnvWriter::default();
        write!(h, "{self}").expect("hashing never fails");
        h.cookie()
    }

    /// An owned copy, e.g. to hand to `ovs` in a `FlowDiff`.
    pub fn to_flow(&self) -> Flow {
        Flow::new(self.table, self.priority, self.matches, self.actions)
    }
}

impl fmt::Display for FlowRef<'_> {
    /// The flow as an `ovs-ofctl add-flow` argument, cookie excluded.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "table={},priority={}", self.table, self.priority)?;
        if !self.matches.is_empty() {
            write!(f, ",{}", self.matches)?;
        }
        write!(f, " actions={}", self.actions)
    }
}

/// FNV-1a as a `fmt::Write` sink. FNV hashes byte by byte, so hashing the pieces of a text
/// one after the other gives the hash of the whole text.
#[derive(Default)]
struct FnvWriter(fnv::FnvHasher);

impl FnvWriter {
    fn cookie(&self) -> u64 {
        COOKIE_TAG | (self.0.finish() & COOKIE_HASH_BITS)
    }
}

impl fmt::Write for FnvWriter {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.0.write(s.as_bytes());
        Ok(())
    }
}

/// Where a piece of a table's text is: a byte range of `Flows::text`. u32 keeps a flow's
/// entry at 20 bytes; a table's text is a few MiB even for 10k port ranges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Span {
    start: u32,
    end: u32,
}

/// One flow of a table: its text is in the table's buffer.
#[derive(Debug, Clone, Copy)]
struct Entry {
    table: u8,
    priority: u16,
    matches: Span,
    actions: Span,
}

impl Entry {
    /// What the flow is ordered by, as bytes (which order as the text does).
    fn key(self, text: &[u8]) -> (u8, u16, &[u8], &[u8]) {
        let span = |s: Span| &text[s.start as usize..s.end as usize];
        (
            self.table,
            self.priority,
            span(self.matches),
            span(self.actions),
        )
    }

    fn get(self, text: &str) -> FlowRef<'_> {
        FlowRef {
            table: self.table,
            priority: self.priority,
            matches: &text[self.matches.start as usize..self.matches.end as usize],
            actions: &text[self.actions.start as usize..self.actions.end as usize],
        }
    }
}

/// The flows of a table, read as `FlowRef`s. All their text is in one buffer and each flow is
/// 20 bytes pointing into it: a bridge with 10k port ranges has ~70k flows, and two heap
/// strings per flow (140k allocations, and as many frees when the table goes) cost more than
/// the whole 5 ms budget for compiling it. Flows may share text (e.g. `output:1`).
#[derive(Clone, Default)]
pub struct Flows {
    text: String,
    entries: Vec<Entry>,
}

impl Flows {
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn get(&self, i: usize) -> Option<FlowRef<'_>> {
        self.entries.get(i).map(|e| e.get(&self.text))
    }

    pub fn iter(&self) -> Iter<'_> {
        Iter {
            text: &self.text,
            entries: self.entries.iter(),
        }
    }
}

impl<'a> IntoIterator for &'a Flows {
    type Item = FlowRef<'a>;
    type IntoIter = Iter<'a>;
    fn into_iter(self) -> Iter<'a> {
        self.iter()
    }
}

/// Equal when they hold the same flows in the same order, however their text is laid out.
impl PartialEq for Flows {
    fn eq(&self, other: &Self) -> bool {
        self.iter().eq(other.iter())
    }
}

impl Eq for Flows {}

impl fmt::Debug for Flows {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

/// The flows of a `Flows`, in table order.
#[derive(Clone)]
pub struct Iter<'a> {
    text: &'a str,
    entries: std::slice::Iter<'a, Entry>,
}

impl<'a> Iterator for Iter<'a> {
    type Item = FlowRef<'a>;
    fn next(&mut self) -> Option<FlowRef<'a>> {
        self.entries.next().map(|e| e.get(self.text))
    }
    fn size_hint(&self) -> (usize, Option<usize>) {
        self.entries.size_hint()
    }
}

impl DoubleEndedIterator for Iter<'_> {
    fn next_back(&mut self) -> Option<Self::Item> {
        self.entries.next_back().map(|e| e.get(self.text))
    }
}

impl ExactSizeIterator for Iter<'_> {}

/// The complete desired flow table of one bridge: sorted, no duplicates.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FlowTable {
    pub flows: Flows,
}

impl FlowTable {
    /// Every flow's cookie, in table order.
    pub fn cookies(&self) -> Vec<u64> {
        self.flows.iter().map(|f| f.cookie()).collect()
    }

    pub fn new(flows: Vec<Flow>) -> Self {
        let text = flows
            .iter()
            .map(|f| f.matches.len() + f.actions.len())
            .sum();
        let mut b = FlowTableBuilder::with_capacity(flows.len(), text);
        for f in &flows {
            let matches = b.text(&[&f.matches]);
            let actions = b.text(&[&f.actions]);
            b.push(f.table, f.priority, matches, actions);
        }
        b.finish()
    }

    /// One flow per line with its cookie: the golden-file format, and what a person reads.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(self.flows.text.len() + 64 * self.flows.len());
        let mut line = String::new();
        for f in &self.flows {
            let cookie = write_and_hash(&mut line, f);
            writeln!(out, "cookie={cookie:#018x},{line}").expect("writing to a String");
        }
        out
    }
}

/// Writes `f` into `line` (replacing what was there) and returns its cookie, hashed from
/// the text just written.
fn write_and_hash(line: &mut String, f: FlowRef<'_>) -> u64 {
    line.clear();
    write!(line, "{f}").expect("writing to a String");
    let mut h = FnvWriter::default();
    h.0.write(line.as_bytes());
    h.cookie()
}

/// Builds a `FlowTable` from text pieces: `text` appends to the table's buffer, `push` adds a
/// flow whose match and actions are spans of it (a span may serve many flows), `finish` puts
/// the flows in table order.
pub(super) struct FlowTableBuilder {
    /// Bytes, so that ASCII from the compiler (port blocks) goes in without a UTF-8 check per
    /// piece; `finish` checks the whole text once.
    text: Vec<u8>,
    entries: Vec<Entry>,
}

impl FlowTableBuilder {
    /// Room for `flows` flows and `text` bytes of their text, so that nothing is reallocated
    /// (and copied) on the way when the estimate holds.
    pub(super) fn with_capacity(flows: usize, text: usize) -> Self {
        Self {
            text: Vec::with_capacity(text),
            entries: Vec::with_capacity(flows),
        }
    }

    /// Appends the concatenation of `parts` to the table's text.
    pub(super) fn text(&mut self, parts: &[&str]) -> Span {
        let start = self.text.len();
        for p in parts {
            self.text.extend_from_slice(p.as_bytes());
        }
        self.span_from(start)
    }

    fn span_from(&self, start: usize) -> Span {
        let offset = |n: usize| u32::try_from(n).expect("flow table text over 4 GiB");
        Span {
            start: offset(start),
            end: offset(self.text.len()),
        }
    }

    pub(super) fn push(&mut self, table: u8, priority: u16, matches: Span, actions: Span) {
        self.entries.push(Entry {
            table,
            priority,
            matches,
            actions,
        });
    }

    /// Adds a flow whose match is the concatenation of `matches`.
    pub(super) fn flow(&mut self, table: u8, priority: u16, matches: &[&str], actions: Span) {
        let matches = self.text(matches);
        self.push(table, priority, matches, actions);
    }

    /// Adds a flow whose match is `prefix` followed by `ascii` (e.g. a port block's text).
    pub(super) fn flow_ascii(
        &mut self,
        table: u8,
        priority: u16,
        prefix: &str,
        ascii: &[u8],
        actions: Span,
    ) {
        debug_assert!(ascii.is_ascii());
        let start = self.text.len();
        self.text.extend_from_slice(prefix.as_bytes());
        self.text.extend_from_slice(ascii);
        let matches = self.span_from(start);
        self.push(table, priority, matches, actions);
    }

    /// Whether the flows so far are in table order without duplicates: then `finish` has
    /// nothing to sort.
    pub(super) fn in_table_order(&self) -> bool {
        let key = |e: &Entry| e.key(&self.text);
        self.entries.windows(2).all(|w| key(&w[0]) < key(&w[1]))
    }

    /// The table of flows added in table order without duplicates, by a caller that knows
    /// they are: not even checked, except in debug builds (and so in every test).
    pub(super) fn finish_in_order(self) -> FlowTable {
        debug_assert!(self.in_table_order(), "flows not added in table order");
        self.into_table()
    }

    /// Sorts the flows and drops duplicates. Comparing flows compares their text, and most
    /// flows of a table share a long prefix (`tcp,in_port=12,dl_src=...`), so a full sort of
    /// ~70k flows costs ~10 ms, and even checking the order ~1 ms. The compiler therefore adds
    /// flows in table order and uses `finish_in_order` when it can; this is for the rest.
    pub(super) fn finish(mut self) -> FlowTable {
        if !self.in_table_order() {
            let text = &self.text;
            self.entries.sort_by(|a, b| a.key(text).cmp(&b.key(text)));
            self.entries.dedup_by(|a, b| a.key(text) == b.key(text));
        }
        self.into_table()
    }

    fn into_table(self) -> FlowTable {
        let text = String::from_utf8(self.text).expect("flow text is str pieces and ASCII");
        FlowTable {
            flows: Flows {
                text,
                entries: self.entries,
            },
        }
    }
}

/// What must change in OVS to get from the installed flows to the desired ones.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FlowDiff {
    /// Cookies of installed flows that are not desired.
    pub delete: Vec<u64>,
    pub add: Vec<Flow>,
}

impl FlowDiff {
    pub fn is_empty(&self) -> bool {
        self.delete.is_empty() && self.add.is_empty()
    }

    /// The diff as an `ovs-ofctl --bundle add-flows` file: deletes first, so that a flow
    /// re-added with the same match but new actions is not deleted after it was added.
    pub fn to_bundle(&self) -> String {
        let mut out = String::new();
        for c in &self.delete {
            writeln!(out, "delete cookie={c:#x}/-1").expect("writing to a String");
        }
        let mut line = String::new();
        for f in &self.add {
            let cookie = write_and_hash(&mut line, f.as_flow_ref());
            writeln!(out, "add cookie={cookie:#x},{line}").expect("writing to a String");
        }
        out
    }
}

/// Compares desired flows with the cookies installed on the bridge. Flows are identified by
/// cookie only, which is a hash of the whole flow, so unchanged flows are never touched.
/// `delete` comes out sorted and without repeats; `add` in table order.
pub fn diff(desired: &FlowTable, installed: &[u64]) -> FlowDiff {
    // Each cookie hashes the flow's whole text, so it is computed once per flow; sorted
    // vectors and binary search do the set work.
    let cookies = desired.cookies();
    let mut wanted = cookies.clone();
    wanted.sort_unstable();
    let mut installed = installed.to_vec();
    installed.sort_unstable();
    installed.dedup();
    FlowDiff {
        delete: installed
            .iter()
            .copied()
            .filter(|c| wanted.binary_search(c).is_err())
            .collect(),
        add: desired
            .flows
            .iter()
            .zip(&cookies)
            .filter(|(_, c)| installed.binary_search(c).is_err())
            .map(|(f, _)| f.to_flow())
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookie_is_tagged_and_changes_with_the_flow() {
        let a = Flow::new(0, 10, "in_port=1", "LOCAL");
        let b = Flow::new(0, 10, "in_port=1", "output:2");
        assert_eq!(a.cookie() >> 56, 0x70);
        assert_eq!(a.cookie(), a.clone().cookie());
        assert_ne!(a.cookie(), b.cookie());
    }

    #[test]
    fn cookie_is_the_fnv_hash_of_the_flow_text() {
        for f in [
            Flow::new(0, 0, "", "goto_table:20"),
            Flow::new(20, 200, "tcp,in_port=2,tp_src=0x2710/0xfff0", "output:1"),
        ] {
            let mut h = fnv::FnvHasher::default();
            h.write(f.to_string().as_bytes());
            assert_eq!(f.cookie(), COOKIE_TAG | (h.finish() & COOKIE_HASH_BITS));
            let table = FlowTable::new(vec![f.clone()]);
            assert_eq!(table.flows.get(0).unwrap().cookie(), f.cookie());
            assert_eq!(table.render(), format!("cookie={:#018x},{f}\n", f.cookie()));
        }
    }

    #[test]
    fn table_is_sorted_without_duplicates_however_it_is_given() {
        let a = Flow::new(0, 10, "in_port=1", "LOCAL");
        let b = Flow::new(0, 10, "in_port=10", "LOCAL");
        let c = Flow::new(0, 10, "in_port=10", "drop");
        let d = Flow::new(10, 0, "", "LOCAL");
        let want = vec![a.clone(), b.clone(), c.clone(), d.clone()];
        let t = FlowTable::new(vec![d.clone(), c.clone(), a.clone(), b.clone(), c, a]);
        let got: Vec<Flow> = t.flows.iter().map(|f| f.to_flow()).collect();
        assert_eq!(got, want);
        assert_eq!(t, FlowTable::new(want));
        assert_eq!(t.flows.len(), 4);
        assert_eq!(t.flows.iter().next_back(), Some(d.as_flow_ref()));
        assert!(FlowTable::default().flows.is_empty());
    }

    #[test]
    fn diff_adds_missing_and_deletes_stale_only() {
        let keep = Flow::new(0, 10, "in_port=1", "LOCAL");
        let new = Flow::new(0, 20, "in_port=2", "drop");
        let stale = Flow::new(0, 20, "in_port=3", "drop");
        let desired = FlowTable::new(vec![keep.clone(), new.clone()]);
        let d = diff(
            &desired,
            &[keep.cookie(), stale.cookie(), 0, stale.cookie()],
        );
        assert_eq!(d.add, vec![new.clone()]);
        let mut del = vec![stale.cookie(), 0];
        del.sort();
        assert_eq!(d.delete, del);
        let bundle = d.to_bundle();
        let first_add = bundle.find("add ").unwrap();
        assert!(bundle.rfind("delete ").unwrap() < first_add, "{bundle}");
        assert!(bundle.contains(&format!("add cookie={:#x},{new}\n", new.cookie())));
        assert!(diff(&desired, &[keep.cookie(), new.cookie()]).is_empty());
    }
}
