/* vs_mem.c - guest address translation against the region table.
 *
 * Every translation checks that [addr, addr + len) lies inside a region using only subtraction on
 * uint64_t (never addr + len), so a hostile address cannot wrap.  Python sized each region's hva
 * mapping to exactly `size` bytes, which is what makes hva + offset (offset < size) in bounds.
 */
#include <errno.h>
#include <string.h>

#include "vs_api.h"

static uint32_t mem_count(const struct vs_mem *m)
{
    return m->n < VS_MAX_REGIONS ? m->n : VS_MAX_REGIONS;
}

/* The region of a large table (memory hot-plug) that holds gpa, or NULL: a search by halves, which
 * needs Python's sort by gpa.  On an unsorted table it may miss (a dropped chain), never return a
 * region that does not hold gpa (the last line checks).  Inlined like the walk below: a call here
 * would make the walk save and restore registers on every lookup. */
static inline __attribute__((always_inline)) const struct vs_region *gpa_search(const struct vs_mem *m, uint64_t gpa,
                                                                                uint32_t n)
{
    /* The last region starting at or below gpa is in [lo, lo + n); halving without a branch on the
     * comparison (a conditional move): random addresses would mispredict every other step. */
    uint32_t lo = 0;
    while (n > 1) {
        uint32_t half = n / 2;
        lo = m->r[lo + half].gpa <= gpa ? lo + half : lo; /* SAFETY: lo + half < lo + n <= count */
        n -= half;
    }
    const struct vs_region *r = &m->r[lo];
    return gpa >= r->gpa && gpa - r->gpa < r->size ? r : NULL;
}

/* Region holding gpa, or NULL.  A few regions (the common case) are walked, inline. */
static inline __attribute__((always_inline)) const struct vs_region *gpa_region(const struct vs_mem *m, uint64_t gpa)
{
    uint32_t n = mem_count(m);
    if (n > VS_LINEAR_REGIONS)
        return gpa_search(m, gpa, n);
    for (uint32_t i = 0; i < n; i++) {
        const struct vs_region *r = &m->r[i];
        if (gpa >= r->gpa && gpa - r->gpa < r->size)
            return r;
    }
    return NULL;
}

/* Region holding the front-end user address uva, or NULL (ring addresses only: a walk). */
static const struct vs_region *uva_region(const struct vs_mem *m, uint64_t uva)
{
    for (uint32_t i = 0; i < mem_count(m); i++) {
        const struct vs_region *r = &m->r[i];
        if (uva >= r->uva && uva - r->uva < r->size)
            return r;
    }
    return NULL;
}

/* Address of [addr, addr + len) if it lies wholly inside one region, else NULL; addr is a front-end
 * user address (by_uva) or a guest-physical one. */
static uint8_t *range_hva(const struct vs_mem *m, uint64_t addr, uint64_t len, int by_uva)
{
    const struct vs_region *r = by_uva ? uva_region(m, addr) : gpa_region(m, addr);
    if (r == NULL)
        return NULL;
    uint64_t off = addr - (by_uva ? r->uva : r->gpa);
    if (len > r->size - off)
        return NULL;
    /* SAFETY: off < size and the whole range fits in the region's size bytes. */
    return r->hva + off;
}

/* Ring addresses (SET_VRING_ADDR) are front-end user addresses. */
uint8_t *vs_uva_to_hva(const struct vs_mem *m, uint64_t uva, uint64_t len)
{
    return range_hva(m, uva, len, 1);
}

/* Descriptor addresses are guest-physical. */
uint8_t *vs_gpa_to_hva(const struct vs_mem *m, uint64_t gpa, uint64_t len)
{
    return range_hva(m, gpa, len, 0);
}

/* Append iovecs for [gpa, gpa + len) at iov[*niov], splitting where the range crosses from one
 * region into the next; gpas (NULL or as long as iov) gets each piece's guest-physical address, which
 * the dirty log needs.  Returns 0, VS_CHAIN_FAULT (a byte outside memory) or VS_CHAIN_TOO_MANY. */
int vs_gpa_to_iov(const struct vs_mem *m, uint64_t gpa, uint64_t len, struct iovec *iov, uint64_t *gpas, uint32_t *niov,
                  uint32_t max)
{
    while (len > 0) {
        const struct vs_region *r = gpa_region(m, gpa);
        if (r == NULL)
            return VS_CHAIN_FAULT;
        uint64_t off = gpa - r->gpa;
        uint64_t take = r->size - off < len ? r->size - off : len;
        if (*niov >= max)
            return VS_CHAIN_TOO_MANY;
        /* SAFETY: off < r->size and take <= r->size - off: the piece lies inside the region. */
        iov[*niov].iov_base = r->hva + off;
        iov[*niov].iov_len = (size_t)take;
        if (gpas != NULL)
            gpas[*niov] = gpa; /* SAFETY: gpas has as many entries as iov, and *niov < max */
        (*niov)++;
        len -= take;
        if (len > 0 && gpa > UINT64_MAX - take)
            return VS_CHAIN_FAULT; /* the range would wrap past 2^64 */
        gpa += take;
    }
    return 0;
}

/* Copy n bytes to logical offset off of the iovec list (bytes past its end are dropped). */
void vs_iov_write(const struct iovec *iov, uint32_t niov, uint64_t off, const void *src, size_t n)
{
    const uint8_t *s = src;
    for (uint32_t i = 0; i < niov && n > 0; i++) {
        if (off >= iov[i].iov_len) {
            off -= iov[i].iov_len;
            continue;
        }
        size_t k = iov[i].iov_len - off < n ? iov[i].iov_len - off : n;
        /* SAFETY: off < iov_len and k <= iov_len - off: inside a translated guest piece. */
        memcpy((uint8_t *)iov[i].iov_base + off, s, k);
        s += k;
        n -= k;
        off = 0;
    }
}

/* The guest-physical address of [uva, uva + len) when it lies inside one region (the dirty log of a
 * ring area known by its front-end address): 0, or -EFAULT. */
int vs_uva_to_gpa(const struct vs_mem *m, uint64_t uva, uint64_t len, uint64_t *gpa)
{
    for (uint32_t i = 0; i < mem_count(m); i++) {
        const struct vs_region *r = &m->r[i];
        if (uva < r->uva || uva - r->uva >= r->size || len > r->size - (uva - r->uva))
            continue;
        *gpa = r->gpa + (uva - r->uva);
        return 0;
    }
    return -EFAULT;
}
