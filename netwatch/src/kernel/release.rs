//! The running kernel's release (`uname -r`) and its `(major, minor)`: what `doctor` holds
//! against the floor, and what switches off a helper older kernels lack.

use std::io;

/// `uname -r`.
pub fn running() -> io::Result<String> {
    // SAFETY: utsname is plain C data (arrays of c_char), for which all zeroes is a valid value.
    let mut uts: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: uname(2) writes only into the struct we pass, which lives across the call.
    if unsafe { libc::uname(&mut uts) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel NUL-terminates each field within its array, so the pointer is valid for
    // reads up to and including that NUL while `uts` lives (it outlives this borrow).
    let release = unsafe { std::ffi::CStr::from_ptr(uts.release.as_ptr()) };
    Ok(release.to_string_lossy().into_owned())
}

/// `(major, minor)` of a release string such as `6.1.0-47-cloud-amd64`; `None` when it does not
/// start with two dotted numbers.
pub fn version(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split('.');
    let number = |part: Option<&str>| -> Option<u32> {
        let part = part?;
        let end = part
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(part.len());
        part[..end].parse().ok()
    };
    Some((number(parts.next())?, number(parts.next())?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_of_release_strings() {
        assert_eq!(version("6.1.0-47-cloud-amd64"), Some((6, 1)));
        assert_eq!(version("6.12.117+deb12-cloud-amd64"), Some((6, 12)));
        assert_eq!(version("5.15.0"), Some((5, 15)));
        assert_eq!(version("unknown"), None);
        assert!(running().is_ok_and(|r| version(&r).is_some()));
    }
}
