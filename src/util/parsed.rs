/// What a sans-IO parser makes of the bytes so far: a value and how many bytes it used, or
/// "need more bytes". Shared by every codec (SOCKS5, HTTP, the sniffer, upstream replies),
/// so one read loop ([`crate::side::Side::read_until`]) serves them all.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed<T> {
    Done(T, usize),
    Incomplete,
}
