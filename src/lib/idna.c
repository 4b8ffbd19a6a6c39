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
    char *ascii = NULL;
    if (idna_is_utf8_name(in)) {
        /* NFC first (a name may arrive decomposed), UTS #46 mapping (case folding, width),
         * IDNA2008 rules for what is left */
        int rc = idn2_to_ascii_8z(in, &ascii, IDN2_NFC_INPUT | IDN2_NONTRANSITIONAL);
        if (rc != IDN2_OK) {
            snprintf(err, errlen, "IDNA: %s", idn2_strerror(rc));
            return -1;
        }
        in = ascii;
    }
    size_t n = strlen(in);
    int rc = 0;
    if (n >= cap) {
        snprintf(err, errlen, "name too long");
        rc = -1;
    } else {
        memcpy(out, in, n + 1);
        str_lower(out);
    }
    idn2_free(ascii);
    return rc;
}
