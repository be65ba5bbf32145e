//! Both layouts: round trips, every refusal, probe, geometry.

use super::*;

#[test]
fn header_round_trip_and_offsets() {
    let h = Header::new(b"disk.raw", Some(b"/base/golden.img")).unwrap();
    let bytes = h.to_bytes();
    assert_eq!(&bytes[..8], b"ADD_COW\xff");
    assert_eq!(&bytes[8..12], &[0, 0, 0, 1]);
    assert_eq!(&bytes[12..28], b"/base/golden.img");
    assert_eq!(bytes[28], 0);
    assert_eq!(&bytes[1036..1044], b"disk.raw");
    assert!(bytes[2060..].iter().all(|&b| b == 0));
    assert_eq!(Header::parse(&bytes).unwrap(), h);
    assert_eq!(h.bitmap_offset(), 2560);
}

#[test]
fn empty_backing_is_none() {
    let h = Header::new(b"i", Some(b"")).unwrap();
    assert_eq!(h.backing_file, None);
    assert_eq!(Header::parse(&h.to_bytes()).unwrap().backing_file, None);
}

#[test]
fn name_limits() {
    let max = vec![b'a'; 1023];
    let h = Header::new(&max, Some(&max)).unwrap();
    assert_eq!(Header::parse(&h.to_bytes()).unwrap(), h);
    let long = vec![b'a'; 1024];
    assert!(Header::new(&long, None)
        .unwrap_err()
        .to_string()
        .contains("1024 bytes"));
    assert!(Header::new(b"i", Some(&long)).is_err());
    assert!(Header::new(b"", None).is_err());
    assert!(Header::new(b"a\0b", None).is_err());
}

#[test]
fn malformed_headers() {
    let good = Header::new(b"img", Some(b"base")).unwrap().to_bytes();
    let mut b = good.clone();
    b[0] = b'X';
    assert_eq!(Header::parse(&b).unwrap_err().errno(), libc::EINVAL);
    let mut b = good.clone();
    b[11] = 2;
    let e = Header::parse(&b).unwrap_err();
    assert_eq!(e.errno(), libc::ENOTSUP);
    assert!(e.to_string().contains("version 2"));
    assert!(Header::parse(&good[..2000])
        .unwrap_err()
        .to_string()
        .contains("truncated"));
    let mut b = good.clone();
    b[12..1036].fill(b'x');
    assert!(Header::parse(&b)
        .unwrap_err()
        .to_string()
        .contains("NUL-terminated"));
    let mut b = good.clone();
    b[1100] = b'x';
    assert!(Header::parse(&b)
        .unwrap_err()
        .to_string()
        .contains("after its NUL"));
    let mut b = good.clone();
    b[1036] = 0;
    b[1037] = 0;
    b[1038] = 0;
    assert!(Header::parse(&b).unwrap_err().to_string().contains("empty"));
    let mut b = good.clone();
    b[2559] = 1;
    assert!(Header::parse(&b)
        .unwrap_err()
        .to_string()
        .contains("reserved"));
}

#[test]
fn probe_scores() {
    let good = Header::new(b"img", None).unwrap().to_bytes();
    assert_eq!(probe(&good), 100);
    assert_eq!(probe(&good[..12]), 100);
    assert_eq!(probe(&good[..11]), 0);
    assert_eq!(probe(&[]), 0);
    let mut v2 = good;
    v2[11] = 2;
    assert_eq!(probe(&v2), 0);
    assert_eq!(probe(b"ACOW"), 100);
    assert_eq!(probe(b"ACO"), 0);
    assert_eq!(probe(&[0u8; 512]), 0);
}

#[test]
fn geometry_of_odd_sizes() {
    let g = Geometry::new(16, 0);
    assert_eq!((g.clusters(), g.clusters().div_ceil(8)), (0, 0));
    let g = Geometry::new(16, 1);
    assert_eq!((g.clusters(), g.clusters().div_ceil(8)), (1, 1));
    assert_eq!(g.cluster_end(Cluster(0)), 1);
    let g = Geometry::new(16, 65536);
    assert_eq!((g.clusters(), g.clusters().div_ceil(8)), (1, 1));
    let g = Geometry::new(16, 65537);
    assert_eq!((g.clusters(), g.clusters().div_ceil(8)), (2, 1));
    assert_eq!(g.cluster_end(Cluster(1)), 65537);
    let g = Geometry::new(16, 8 * 65536 + 512);
    assert_eq!((g.clusters(), g.clusters().div_ceil(8)), (9, 2));
    let g = Geometry::new(16, 1 << 40);
    assert_eq!(g.clusters().div_ceil(8), 2 << 20, "2 MiB of bitmap per TiB");
    let g = Geometry::new(12, 10_000);
    assert_eq!((g.cluster_size(), g.clusters()), (4096, 3));
    assert_eq!(g.cluster_of(8191), Cluster(1));
    assert_eq!(g.cluster_start(Cluster(2)), 8192);
    assert_eq!(Cluster(2) + 3, Cluster(5));
    assert_eq!(Cluster(5) - Cluster(2), 3);
}

// Layout 2.

fn v2(image: &[u8], backing: Option<(&[u8], BackingFormat)>, bits: u32) -> Vec<u8> {
    Header::new_v2(image, backing, bits).unwrap().to_bytes()
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

#[test]
fn v2_bytes_are_as_specified() {
    let b = v2(
        b"disk.raw",
        Some((b"base.add-cow", BackingFormat::AddCow)),
        16,
    );
    assert_eq!(b.len(), 65536, "header_size = max(4096, cluster size)");
    assert_eq!(&b[..4], b"ACOW");
    assert_eq!((le32(&b, 12), le32(&b, 16)), (76, 8));
    assert_eq!(&b[76..84], b"disk.raw");
    assert_eq!((le32(&b, 4), le32(&b, 8)), (84, 12));
    assert_eq!(&b[84..96], b"base.add-cow");
    assert_eq!(le32(&b, 20), 16);
    assert_eq!(&b[24..40], &[0; 16], "no feature bits");
    assert_eq!(le32(&b, 40), 65536);
    assert_eq!(&b[44..52], b"add-cow\0");
    assert_eq!(&b[60..64], b"raw\0");
    assert!(b[96..].iter().all(|&x| x == 0), "the rest is zero");
    let h = Header::parse(&b).unwrap();
    assert_eq!(h.layout_number(), 2);
    assert_eq!(h.backing_format, Some(BackingFormat::AddCow));
    assert_eq!(h.to_bytes(), b);
    let small = v2(b"i", None, 12);
    assert_eq!(small.len(), 4096);
    assert_eq!((le32(&small, 4), le32(&small, 8)), (0, 0));
    assert_eq!(&small[44..60], &[0; 16], "no backing format");
}

#[test]
fn v2_geometry_of_the_bitmap() {
    let h = Header::new_v2(b"i", None, 12).unwrap();
    assert_eq!(h.bitmap_offset(), 4096);
    assert_eq!(h.bitmap_len(0), 0, "no padding for an empty image");
    assert_eq!(h.bitmap_len(1), 4096);
    assert_eq!(h.bitmap_len(4096 * 8), 4096);
    assert_eq!(h.bitmap_len(4096 * 8 + 1), 8192);
    let h = Header::new_v2(b"i", None, 21).unwrap();
    assert_eq!((h.bitmap_offset(), h.bitmap_len(3)), (2 << 20, 2 << 20));
    let h1 = Header::new(b"i", None).unwrap();
    assert_eq!((h1.bitmap_offset(), h1.bitmap_len(9)), (2560, 2));
}

/// A valid layout-2 header of 4096 bytes to break.
fn good_v2() -> Vec<u8> {
    v2(b"disk.raw", Some((b"base.raw", BackingFormat::Raw)), 12)
}

#[track_caller]
fn refused(b: &[u8], errno: i32, words: &str) {
    let e = Header::parse(b).unwrap_err();
    assert_eq!(e.errno(), errno, "{e}");
    assert!(e.to_string().contains(words), "{e} does not say {words:?}");
}

#[test]
fn v2_refusals() {
    let put = |b: &mut Vec<u8>, at: usize, v: u32| b[at..at + 4].copy_from_slice(&v.to_le_bytes());
    let mut b = good_v2();
    put(&mut b, 20, 11);
    refused(&b, libc::EINVAL, "cluster_bits 11");
    let mut b = good_v2();
    put(&mut b, 20, 22);
    refused(&b, libc::EINVAL, "cluster_bits 22");
    let mut b = good_v2();
    put(&mut b, 40, 8192);
    refused(&b, libc::EINVAL, "header_size is 8192");
    refused(&good_v2()[..4095], libc::EINVAL, "truncated");
    let mut b = good_v2();
    b[24 + 2] = 0x80;
    refused(&b, libc::ENOTSUP, "incompatible feature bit 23");
    let mut b = good_v2();
    b[60..64].copy_from_slice(b"qcow");
    refused(&b, libc::ENOTSUP, "image file format 'qcow'");
    let mut b = good_v2();
    b[44..48].copy_from_slice(b"vmdk");
    refused(&b, libc::ENOTSUP, "backing file format 'vmdk'");
    let mut b = good_v2();
    b[44..47].copy_from_slice(&[0; 3]);
    refused(&b, libc::EINVAL, "format is empty");
    let mut b = good_v2();
    put(&mut b, 4, 0);
    put(&mut b, 8, 0);
    refused(&b, libc::EINVAL, "no backing file");
    let mut b = good_v2();
    put(&mut b, 8, 0);
    refused(&b, libc::EINVAL, "both 0 or neither");
    let mut b = good_v2();
    put(&mut b, 12, 70);
    refused(&b, libc::EINVAL, "outside the name area");
    let mut b = good_v2();
    put(&mut b, 4, 4090);
    refused(&b, libc::EINVAL, "outside the name area");
    let mut b = good_v2();
    put(&mut b, 4, u32::MAX);
    refused(&b, libc::EINVAL, "outside the name area");
    let mut b = good_v2();
    put(&mut b, 4, 80);
    refused(&b, libc::EINVAL, "overlap");
    let mut b = good_v2();
    b[77] = 0;
    refused(&b, libc::EINVAL, "NUL");
    let mut b = good_v2();
    b[84..92].copy_from_slice(b"disk.raw");
    refused(&b, libc::EINVAL, "same name");
    let mut b = good_v2();
    b[47] = b'x';
    b[48] = 0;
    b[49] = b'y';
    refused(&b, libc::EINVAL, "after its NUL");
    let mut b = good_v2();
    put(&mut b, 12, 0);
    put(&mut b, 16, 0);
    refused(&b, libc::EINVAL, "image file name is missing");
    // Other name-area bytes are ignored; unknown compatible bits are kept.
    let mut b = good_v2();
    b[2000] = 0xAB;
    b[33] = 0x40;
    let h = Header::parse(&b).unwrap();
    assert_eq!(h.compatible_features(), 0x40 << 8);
    assert_eq!(le32(&h.to_bytes(), 36), 0);
    assert_eq!(h.to_bytes()[33], 0x40);
    assert_eq!(h.to_bytes()[2000], 0, "written as zeros");
}

#[test]
fn v2_empty_image_format_reads_as_raw() {
    let mut b = good_v2();
    b[60..63].copy_from_slice(&[0; 3]);
    let h = Header::parse(&b).unwrap();
    assert_eq!(h.image_format(), "raw");
    assert_eq!(&h.to_bytes()[60..63], b"raw");
}

#[test]
fn v2_all_allocated_bit() {
    let mut h = Header::new_v2(b"i", None, 16).unwrap();
    assert!(!h.all_allocated());
    assert!(h.set_all_allocated(true));
    assert_eq!(h.to_bytes()[32], 1);
    assert!(Header::parse(&h.to_bytes()).unwrap().all_allocated());
    let mut h1 = Header::new(b"i", None).unwrap();
    assert!(!h1.set_all_allocated(true));
    assert!(!h1.all_allocated());
}

#[test]
fn v2_names_must_fit_and_differ() {
    let long = vec![b'n'; 4021];
    let e = Header::new_v2(&long, None, 12).unwrap_err();
    assert!(e.to_string().contains("room for 4020"), "{e}");
    Header::new_v2(&long[..4020], None, 12).unwrap();
    Header::new_v2(&long, None, 13).unwrap();
    let e = Header::new_v2(b"x", Some((b"x", BackingFormat::Raw)), 16).unwrap_err();
    assert!(e.to_string().contains("same name"), "{e}");
}

#[test]
fn len_of_tells_the_header_length() {
    assert_eq!(Header::len_of(&good_v2()[..v2::FIXED]).unwrap(), 4096);
    let v1 = Header::new(b"i", None).unwrap().to_bytes();
    assert_eq!(Header::len_of(&v1[..v2::FIXED]).unwrap(), 2560);
    assert_eq!(Header::len_of(b"nope").unwrap_err().errno(), libc::EINVAL);
}

/// Applies a backing rewrite to a header's bytes: the name, then the switch.
fn apply(bytes: &mut [u8], r: &BackingRewrite) {
    for (at, b) in r.name.iter().chain([&r.switch]) {
        bytes[*at as usize..*at as usize + b.len()].copy_from_slice(b);
    }
}

#[test]
fn v1_backing_rewrite_overwrites_the_field_as_far_as_the_longer_name() {
    let h = Header::new(b"disk.raw", Some(b"a-rather-long-base.raw")).unwrap();
    let mut bytes = h.to_bytes();
    let r = h.backing_rewrite(
        &bytes[..REWRITE_PREFIX],
        Some((b"b.raw", BackingFormat::AddCow)),
    );
    let r = r.unwrap();
    assert_eq!(
        (r.name.clone(), r.switch.0, r.switch.1.len()),
        (None, 12, 22)
    );
    assert!(r.atomic);
    apply(&mut bytes, &r);
    let parsed = Header::parse(&bytes).unwrap();
    assert_eq!(parsed.backing_file.as_deref(), Some(&b"b.raw"[..]));
    assert_eq!(parsed, r.header);
    // Removing it; then names past the first sector are not atomic.
    let none = r
        .header
        .backing_rewrite(&bytes[..REWRITE_PREFIX], None)
        .unwrap();
    apply(&mut bytes, &none);
    assert_eq!(Header::parse(&bytes).unwrap().backing_file, None);
    let long = none.header.backing_rewrite(
        &bytes[..REWRITE_PREFIX],
        Some((&[b'x'; 501], BackingFormat::Raw)),
    );
    assert!(!long.unwrap().atomic);
    let at_most = none.header.backing_rewrite(
        &bytes[..REWRITE_PREFIX],
        Some((&[b'x'; 500], BackingFormat::Raw)),
    );
    assert!(at_most.unwrap().atomic);
}

#[test]
fn v2_backing_rewrite_puts_the_name_beside_both_and_switches_in_the_first_sector() {
    let mut h = Header::new_v2(b"disk.raw", Some((b"old.raw", BackingFormat::Raw)), 12).unwrap();
    h.set_all_allocated(true);
    let mut bytes = h.to_bytes();
    let r = h
        .backing_rewrite(
            &bytes[..REWRITE_PREFIX],
            Some((b"new.acow", BackingFormat::AddCow)),
        )
        .unwrap();
    // After the image name (76..84) and the old backing name (84..91).
    assert_eq!(r.name, Some((91, b"new.acow".to_vec())));
    assert_eq!((r.switch.0, r.switch.1.len(), r.atomic), (4, 56, true));
    let before = bytes.clone();
    bytes[91..99].copy_from_slice(b"new.acow");
    assert_eq!(
        Header::parse(&bytes).unwrap(),
        h,
        "the name alone changes nothing"
    );
    apply(&mut bytes, &r);
    let parsed = Header::parse(&bytes).unwrap();
    assert_eq!(parsed, r.header);
    assert_eq!(parsed.backing_file.as_deref(), Some(&b"new.acow"[..]));
    assert_eq!(parsed.backing_format, Some(BackingFormat::AddCow));
    assert!(parsed.all_allocated(), "the fields between are kept");
    assert_eq!(bytes[12..44], before[12..44]);
    // The next rename reuses the space in front of the current name once the old is gone.
    let again = parsed
        .backing_rewrite(
            &bytes[..REWRITE_PREFIX],
            Some((b"third", BackingFormat::Raw)),
        )
        .unwrap();
    assert_eq!(again.name.as_ref().unwrap().0, 84);
    apply(&mut bytes, &again);
    assert_eq!(
        Header::parse(&bytes).unwrap().backing_file.as_deref(),
        Some(&b"third"[..])
    );
    let none = again
        .header
        .backing_rewrite(&bytes[..REWRITE_PREFIX], None)
        .unwrap();
    assert_eq!(none.name, None);
    apply(&mut bytes, &none);
    let parsed = Header::parse(&bytes).unwrap();
    assert_eq!((parsed.backing_file, parsed.backing_format), (None, None));
}

#[test]
fn v2_backing_rewrite_refusals() {
    let h = Header::new_v2(b"disk.raw", Some((b"old", BackingFormat::Raw)), 12).unwrap();
    let bytes = h.to_bytes();
    let prefix = &bytes[..REWRITE_PREFIX];
    let same = h.backing_rewrite(prefix, Some((b"disk.raw", BackingFormat::Raw)));
    assert_eq!(same.unwrap_err().errno(), libc::EINVAL);
    // 4020 bytes of name area: 8 + 3 taken; a new name fits beside both up to 4009 bytes.
    let fits = h.backing_rewrite(prefix, Some((&[b'n'; 4009], BackingFormat::Raw)));
    assert_eq!(fits.unwrap().name.unwrap().0, 87);
    let e = h
        .backing_rewrite(prefix, Some((&[b'n'; 4010], BackingFormat::Raw)))
        .unwrap_err();
    assert!(
        e.to_string().contains("cannot be rewritten in place"),
        "{e}"
    );
    let e = h.backing_rewrite(&[0; REWRITE_PREFIX], None).unwrap_err();
    assert!(e.to_string().contains("not a layout-2 header"), "{e}");
}
