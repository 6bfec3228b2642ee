"""City tables: GeoNames exports, plain CSVs, the population threshold, the default table, and exact neighbour counts
near the poles and across the antimeridian."""
from __future__ import annotations
import numpy as np
import pytest

from wm_nb.core import WMError
from wm_nb.cities import load_cities, Cities
from wm_nb.spatial import neighbour_counts, neighbour_pairs

GN_HEADER = ('Geoname ID;Name;ASCII Name;Alternate Names;Feature Class;Feature Code;Country Code;Country name EN;'
             'Country Code 2;Admin1 Code;Admin2 Code;Admin3 Code;Admin4 Code;Population;Elevation;'
             'DIGITAL ELEVATION MODEL;Timezone;Modification date;LABEL EN;Coordinates\n')


def gn_row(gid, name, ascii_name, cc, pop, coords, alt='Alt,Names,With,Commas'):
    return (f'{gid};{name};{ascii_name};{alt};P;PPLC;{cc};Country;;01;;;;{pop};;35;Europe/X;2024-01-01;Country;'
            f'{coords}\n')


def write_export(path, rows):
    path.write_text(GN_HEADER + ''.join(rows), encoding='utf-8')
    return path


def test_geonames_export(tmp_path):
    p = write_export(tmp_path/'geonames-all-cities-with-a-population-1000.csv', [
        gn_row(2988507, 'Paris', 'Paris', 'FR', 2138551, '48.85341, 2.3488'),
        gn_row(2950159, 'Berlin', 'Berlin', 'DE', 3426354, '52.52437, 13.41053'),
        gn_row(3117735, 'Madrid', 'Madrid', 'ES', 3255944, '40.4165, -3.70256'),
        gn_row(2867714, 'München', 'Muenchen', 'DE', 1260391, '48.13743, 11.57549'),
        gn_row(2657896, 'Zürich', 'Zurich', 'CH', 341730, '47.36667, 8.55'),
        gn_row(3000000, 'Petiteville', 'Petiteville', 'FR', 99999, '45.0, 5.0'),
        gn_row(3000001, 'Bordeville', 'Bordeville', 'FR', 100000, '-33.9, 151.2'),
    ])
    c = load_cities(p, keep_order=True)
    # ordered by GeoNames id, ASCII names, 'lat, lon' split, population >= 100,000 inclusive
    assert list(c.name) == ['Zurich', 'Muenchen', 'Berlin', 'Paris', 'Bordeville', 'Madrid']
    assert list(c.country) == ['CH', 'DE', 'DE', 'FR', 'FR', 'ES']
    assert c.lat.tolist() == [47.36667, 48.13743, 52.52437, 48.85341, -33.9, 40.4165]
    assert c.lon.tolist() == [8.55, 11.57549, 13.41053, 2.3488, 151.2, -3.70256]
    assert c.population.tolist() == [341730, 1260391, 3426354, 2138551, 100000, 3255944]
    assert len(load_cities(p, min_population=1_000_000)) == 4
    assert len(load_cities(p, min_population=0)) == 7
    # shuffled by default, deterministically, as a permutation of the same rows
    s1, s2 = load_cities(p, order_seed=1), load_cities(p, order_seed=1)
    assert list(s1.name) == list(s2.name) and sorted(s1.name) == sorted(c.name)
    assert any(list(load_cities(p, order_seed=k).name) != list(c.name) for k in range(5))


def test_geonames_export_errors_name_file_lines(tmp_path):
    rows = [gn_row(5, 'B', 'B', 'FR', 200000, '48.0, 2.0'), gn_row(3, 'A', 'A', 'FR', 200000, '47.0, 2.0'),
            gn_row(4, 'C', 'C', 'FR', 200000, 'x47.5, 2.0')]
    # line 4 of the file even though the rows are re-ordered by id
    with pytest.raises(WMError, match=r"line 4, column 'latitude': 'x47.5' is not a number"):
        load_cities(write_export(tmp_path/'a.csv', rows))
    rows[2] = gn_row(4, 'C', 'C', 'FR', 200000, '47.5')
    with pytest.raises(WMError, match=r"line 4, column 'longitude'"):
        load_cities(write_export(tmp_path/'b.csv', rows))
    (tmp_path/'c.csv').write_text('Geoname ID;Name;Country Code;Population;Coordinates\n1;A;FR;200000;1, 2\n')
    with pytest.raises(WMError, match="'Ascii Name' is missing"): load_cities(tmp_path/'c.csv')


def test_plain_csv_and_threshold(tmp_path):
    p = tmp_path/'mine.csv'
    p.write_text('City,Lat,Lng,Pop\nA,10.5,-20.25,150000\nB,-10,170,149999\nC,0,0,1000000\n')
    c = load_cities(p, min_population=150_000, keep_order=True)
    assert list(c.name) == ['A', 'C'] and c.lat.tolist() == [10.5, 0.0] and c.lon.tolist() == [-20.25, 0.0]
    assert list(c.country) == ['', '']
    assert len(load_cities(p, min_population=0)) == 3
    with pytest.raises(WMError, match=r"no city has population >= 1,000,001"): load_cities(p, min_population=1_000_001)


def test_default_table(default_cities):
    c = default_cities
    assert len(c) == 6204
    assert c.population.min() >= 100_000
    assert (np.abs(c.lat) <= 90).all() and (np.abs(c.lon) <= 180).all()
    assert len(load_cities(min_population=1_000_000)) < 1000
    # default order is a seeded shuffle of the source order
    src = load_cities(keep_order=True)
    assert sorted(src.name.tolist()) == sorted(c.name.tolist()) and list(src.name) != list(c.name)
    assert load_cities().fingerprint() == c.fingerprint()
    assert load_cities(order_seed=1).fingerprint() != c.fingerprint()


def test_csv_round_trip(default_cities, tmp_path):
    default_cities.to_csv(tmp_path/'c.csv')
    back = load_cities(tmp_path/'c.csv', min_population=0, keep_order=True)
    assert back.fingerprint() == default_cities.fingerprint()
    assert list(back.name) == list(default_cities.name)


def brute_counts(c: Cities, radius_km: float, gc) -> np.ndarray:
    d = gc(c.lat[:, None], c.lon[:, None], c.lat[None], c.lon[None])
    np.fill_diagonal(d, np.inf)
    return (d <= radius_km).sum(1)


@pytest.mark.parametrize('radius_km', [50, 200, 1000])
def test_neighbour_counts_poles_antimeridian(edge_cities_factory, great_circle_km, radius_km):
    c = edge_cities_factory(n_pole=300, n_am=300, cap_deg={50: 2.0, 200: 5.0, 1000: 15.0}[radius_km], seed=radius_km)
    got = neighbour_counts(c, radius_km)
    want = brute_counts(c, radius_km, great_circle_km)
    assert np.array_equal(got, want), f"{(got != want).sum()} cities differ"
    # the sets are dense enough to test something, and pairs really span the pole and the antimeridian
    assert want.mean() > 1
    p = neighbour_pairs(c, radius_km)
    dlon = np.abs(c.lon[p[:, 0]] - c.lon[p[:, 1]])
    assert ((dlon > 180) & (np.abs(c.lat[p[:, 0]]) < 10)).sum() > 10, "no pair across the antimeridian"
    assert ((dlon > 90) & (np.abs(c.lat[p[:, 0]]) > 80)).sum() > 10, "no pair across a pole"
    # pairs are unique, ordered i < j and sorted
    assert (p[:, 0] < p[:, 1]).all() and len(np.unique(p, axis=0)) == len(p)


def test_neighbour_counts_default_table(default_cities, great_circle_km):
    "Exact counts on a random 1,500-city subset of the default table (brute force over all pairs)."
    c = default_cities.subset(np.random.default_rng(0).choice(len(default_cities), 1500, replace=False))
    for r in (50, 200):
        assert np.array_equal(neighbour_counts(c, r), brute_counts(c, r, great_circle_km))
    with pytest.raises(WMError, match='positive'): neighbour_counts(c, 0)


def test_line_number_after_blank_line(tmp_path):
    p = tmp_path/'blank.csv'
    p.write_text('name,latitude,longitude,country,population\nA,1,2,X,200000\n\nB,x,2,X,200000\n')
    with pytest.raises(WMError, match=r"line 4, column 'latitude'"): load_cities(p)
