"""The FastMBD scan of MB+ (adapters/mbplus.py), compiled by numba: its own module so that numba loads only when MB+
runs, not when relearn lists its adapters."""

from numba import njit


@njit(cache=True)
def mbd_scan(features, distance, lower, upper, forward):
    """One raster (forward) or inverse-raster scan of FastMBD, in place; the image border stays as seeds."""
    height, width, channels = features.shape
    step = 1 if forward else -1
    rows = range(1, height - 1) if forward else range(height - 2, 0, -1)
    for row in rows:
        columns = range(1, width - 1) if forward else range(width - 2, 0, -1)
        for column in columns:
            for channel in range(channels):
                value = features[row, column, channel]
                best = distance[row, column, channel]
                # the two neighbours already visited in this scan: above/left (forward) or below/right (inverse)
                for neighbour_row, neighbour_column in ((row - step, column), (row, column - step)):
                    high = max(upper[neighbour_row, neighbour_column, channel], value)
                    low = min(lower[neighbour_row, neighbour_column, channel], value)
                    if high - low < best:
                        best = high - low
                        distance[row, column, channel] = best
                        upper[row, column, channel] = high
                        lower[row, column, channel] = low
