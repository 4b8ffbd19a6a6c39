/*
 * idna: see idna.h.
 */
#include "lib/idna.h"

#include <idn2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lib/strutil.h"

bool idna_is_utf8_name(const char *s)
{
    for (; *s; s++)
        if ((unsigned char)*s >= 0x80)
            return true;
    return false;
}

int idna_to_ascii(const char *in, char *out, size_t cap, char *err, size_t errlen)
{
    if (!idna_is_utf8_name(in)) {
        if (strlen(in) >= cap) {
            snprintf(err, errlen, "name too long");
            return -1;
        }
        snprintf(out, cap, "%s", in);
        str_lower(out);
        return 0;
    }
    char *ascii = NULL;
    /* NFC first (a name may arrive decomposed), UTS #46 mapping (case folding, width),
     * IDNA2008 rules for what is left */
    int rc = idn2_to_ascii_8z(in, &ascii, IDN2_NFC_INPUT | IDN2_NONTRANSITIONAL);
    if (rc != IDN2_OK) {
        snprintf(err, errlen, "IDNA: %s", idn2_strerror(rc));
        return -1;
    }
    size_t n = strlen(ascii);
    if (n >= cap) {
        idn2_free(ascii);
        snprintf(err, errlen, "name too long");
        return -1;
    }
    memcpy(out, ascii, n + 1);
    idn2_free(ascii);
    str_lower(out);
    return 0;
}
