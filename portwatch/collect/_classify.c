/*
 * portwatch.collect._classify: the plain-socket loop of
 * portwatch.collect.netlink.count_messages, in C.
 *
 * count_messages classifies every message of a TCP sock_diag dump: it counts
 * the socket by state and, when its local port is usable, by destination, and
 * hands the few a detector looks at to the full parser. This module does the
 * counting for the messages that need nothing else and stops, without touching
 * the tally, at the first message that does (a listener to take, a socket to
 * build, a control message, anything malformed): the Python loop handles that
 * one message with the same code as without this module, then calls back in.
 * The decisions are the Python loop's, test for test (tests/test_classify_c.py
 * runs both over the same buffers and compares the tallies); only the work per
 * message is cheaper: a few loads and table look-ups instead of a struct
 * unpack, two bytes objects and a dict update per socket.
 *
 * Optional: when it is not built (no compiler where portwatch was installed),
 * count_messages runs its own loop over every message, with the same result.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

/* What the Python loop reads of a message: nlmsghdr (16) + inet_diag_msg up to the inode (72). */
#define MSG_LEN 88
#define TABLE 65536
/* Destinations kept in C during one call before they are added to the dict. */
#define SLOTS 256
#define KEY_LEN 35 /* family, remote port (raw), local address, remote address */

typedef struct {
    unsigned char key[KEY_LEN];
    unsigned char used;
    Py_ssize_t count;
} slot_t;

static inline uint32_t load32(const unsigned char *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static inline uint16_t load16(const unsigned char *p) { uint16_t v; memcpy(&v, p, 2); return v; }

static const unsigned char zero16[16];

/* Add the counts of the used slots to usage[(family, local, remote, remote port)]; empties them. */
static int flush_usage(slot_t *slots, PyObject *usage) {
    for (int i = 0; i < SLOTS; i++) {
        slot_t *s = &slots[i];
        if (!s->used)
            continue;
        s->used = 0;
        uint16_t dport;
        memcpy(&dport, s->key + 1, 2);
        PyObject *key = Py_BuildValue("(iy#y#i)", (int)s->key[0], (const char *)s->key + 3, (Py_ssize_t)16,
                                      (const char *)s->key + 19, (Py_ssize_t)16, (int)dport);
        if (key == NULL)
            return -1;
        PyObject *old = PyDict_GetItemWithError(usage, key);
        if (old == NULL && PyErr_Occurred()) {
            Py_DECREF(key);
            return -1;
        }
        Py_ssize_t base = 0;
        if (old != NULL) {
            base = PyLong_AsSsize_t(old);
            if (base == -1 && PyErr_Occurred()) {
                Py_DECREF(key);
                return -1;
            }
        }
        PyObject *value = PyLong_FromSsize_t(base + s->count);
        if (value == NULL) {
            Py_DECREF(key);
            return -1;
        }
        int rc = PyDict_SetItem(usage, key, value);
        Py_DECREF(key);
        Py_DECREF(value);
        if (rc < 0)
            return -1;
    }
    return 0;
}

/* Add counts[n] to states[n] for every n counted. Run before flush_usage: making ints
 * never starts a garbage collection (making tuples can, which may run Python code that
 * changes the list; its size is checked again here all the same). */
static int flush_states(const Py_ssize_t *counts, PyObject *states) {
    for (Py_ssize_t n = 0; n < 256; n++) {
        if (!counts[n])
            continue;
        if (PyList_GET_SIZE(states) != 256) {
            PyErr_SetString(PyExc_ValueError, "count(): states changed size during the call");
            return -1;
        }
        PyObject *old = PyList_GET_ITEM(states, n);
        Py_ssize_t base = PyLong_AsSsize_t(old);
        if (base == -1 && PyErr_Occurred())
            return -1;
        PyObject *value = PyLong_FromSsize_t(base + counts[n]);
        if (value == NULL)
            return -1;
        if (PyList_SetItem(states, n, value) < 0) /* steals value, drops the old item */
            return -1;
    }
    return 0;
}

/* Answers of the set of specific listeners already asked in this call, by (address, raw port). */
#define ASKED 64
typedef struct {
    unsigned char key[18];
    signed char found; /* -1: empty */
} asked_t;

/* Whether (address, raw port) is a specific listener: (address bytes, raw port) is in the set
 * (the Python loop's own Tally.specific). -1 on error. */
static int is_specific(PyObject *specific, asked_t *asked, const unsigned char *addr, uint16_t port) {
    unsigned char raw[18];
    memcpy(raw, addr, 16);
    memcpy(raw + 16, &port, 2);
    asked_t *a = &asked[(port ^ addr[15] ^ (addr[3] << 3)) & (ASKED - 1)];
    if (a->found >= 0 && memcmp(a->key, raw, 18) == 0)
        return a->found;
    PyObject *key = Py_BuildValue("(y#i)", (const char *)addr, (Py_ssize_t)16, (int)port);
    if (key == NULL)
        return -1;
    int found = PySet_Contains(specific, key);
    Py_DECREF(key);
    if (found >= 0) {
        memcpy(a->key, raw, 18);
        a->found = (signed char)found;
    }
    return found;
}

static int table_of(PyObject *obj, Py_buffer *view, Py_ssize_t need, const char *what) {
    if (PyObject_GetBuffer(obj, view, PyBUF_SIMPLE) < 0)
        return -1;
    if (view->len < need) {
        PyErr_Format(PyExc_ValueError, "%s: %zd bytes, %zd needed", what, view->len, need);
        PyBuffer_Release(view);
        return -1;
    }
    return 0;
}

PyDoc_STRVAR(count_doc,
"count(chunk, off, end, seq, msg_type, family_a, family_b, listen, close_wait, plain, states, usage,\n"
"      usable, interest, wildcard, specific_port, specific) -> int\n"
"\n"
"Count the plain sockets of the TCP dump buffer chunk (bytes) from offset off, up to end;\n"
"return the offset of the first message count_messages must handle itself (end when none).\n"
"\n"
"A message is plain when its header is a SOCK_DIAG answer of msg_type and seq, at least 88\n"
"bytes long and within end, of family family_a or family_b, in a state whose entry of plain\n"
"(256 bytes: 0 not a TCP state, 1 a full socket, 2 a mini socket) is not 0 and that is not\n"
"listen, and, when it is connected (a remote port or address), is not one to keep: not\n"
"close_wait, no port of interest, not connected to itself, and for a full socket a TCP\n"
"listener at one of its ends (wildcard[port], or specific_port[port] and (the 16 address\n"
"bytes, the raw port) in the set specific). A plain message adds 1 to states[state] (a list\n"
"of 256 ints) and, when connected with a usable[local port], 1 to\n"
"usage[(family, local address, remote address, raw remote port)] (a dict). Tables are\n"
"65,536 bytes indexed by raw (network order) port. A seq outside 0..2**32-1 or a msg_type\n"
"outside 0..65535 matches no message: off is returned as it is. Raises ValueError for a\n"
"table too short or a states list not of 256 items, TypeError for arguments of the wrong\n"
"type, MemoryError; after an error the tally is partly counted and must be dropped.");

/* The int args[i] into *out; 0, or -1 with the exception set. */
static int long_arg(PyObject *const *args, int i, long *out) {
    *out = PyLong_AsLong(args[i]);
    return (*out == -1 && PyErr_Occurred()) ? -1 : 0;
}

/* Whether the int obj lies in 0..high (without an error: a larger int does not). */
static int within(PyObject *obj, long long high, long long *out) {
    int overflow = 0;
    *out = PyLong_AsLongLongAndOverflow(obj, &overflow);
    if (*out == -1 && PyErr_Occurred())
        return -1;
    return !overflow && *out >= 0 && *out <= high;
}

#define TABLES 5

static PyObject *count(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    (void)module;
    if (nargs != 17) {
        PyErr_Format(PyExc_TypeError, "count() takes 17 arguments (%zd given)", nargs);
        return NULL;
    }
    if (!PyBytes_Check(args[0])) {
        PyErr_SetString(PyExc_TypeError, "count(): chunk must be bytes");
        return NULL;
    }
    Py_ssize_t off = PyLong_AsSsize_t(args[1]);
    if (off == -1 && PyErr_Occurred())
        return NULL;
    Py_ssize_t end = PyLong_AsSsize_t(args[2]);
    if (end == -1 && PyErr_Occurred())
        return NULL;
    long long seq, msg_type;
    int seq_ok = within(args[3], 0xFFFFFFFFLL, &seq);
    if (seq_ok < 0)
        return NULL;
    int type_ok = within(args[4], 0xFFFFLL, &msg_type);
    if (type_ok < 0)
        return NULL;
    long fam_a, fam_b, listen, close_wait;
    if (long_arg(args, 5, &fam_a) < 0 || long_arg(args, 6, &fam_b) < 0 || long_arg(args, 7, &listen) < 0
        || long_arg(args, 8, &close_wait) < 0)
        return NULL;
    PyObject *states = args[10], *usage = args[11], *specific = args[16];
    if (!PyList_Check(states)) {
        PyErr_SetString(PyExc_TypeError, "count(): states must be a list of 256 ints");
        return NULL;
    }
    if (PyList_GET_SIZE(states) != 256) {
        PyErr_SetString(PyExc_ValueError, "count(): states must be a list of 256 ints");
        return NULL;
    }
    if (!PyDict_Check(usage) || !PyAnySet_Check(specific)) {
        PyErr_SetString(PyExc_TypeError, "count(): usage must be a dict and specific a set");
        return NULL;
    }
    const unsigned char *data = (const unsigned char *)PyBytes_AS_STRING(args[0]);
    Py_ssize_t size = PyBytes_GET_SIZE(args[0]);
    if (end > size)
        end = size;
    if (!seq_ok || !type_ok) /* no message can match: count_messages tells what is wrong */
        return PyLong_FromSsize_t(off);
    /* the tables: plain (args[9], by state) and the four by raw port (args[12..15]) */
    static const int table_arg[TABLES] = {9, 12, 13, 14, 15};
    static const char *const table_name[TABLES] = {"plain", "usable", "interest", "wildcard", "specific_port"};
    Py_buffer views[TABLES];
    int held = 0;
    PyObject *result = NULL;
    for (; held < TABLES; held++) {
        if (table_of(args[table_arg[held]], &views[held], held ? TABLE : 256, table_name[held]) < 0)
            goto done;
    }
    const unsigned char *plain = views[0].buf, *usable = views[1].buf, *interest = views[2].buf;
    const unsigned char *wildcard = views[3].buf, *specific_port = views[4].buf;
    Py_ssize_t counts[256] = {0};
    slot_t slots[SLOTS];
    int used = 0;
    memset(slots, 0, sizeof slots);
    asked_t asked[ASKED];
    for (int i = 0; i < ASKED; i++)
        asked[i].found = -1;

    while (off >= 0 && off < end) {
        Py_ssize_t left = end - off;
        if (left < MSG_LEN)
            break;
        const unsigned char *m = data + off;
        uint32_t nlen = load32(m);
        if (load16(m + 4) != (uint16_t)msg_type || nlen < MSG_LEN || (size_t)nlen > (size_t)left
            || load32(m + 8) != (uint32_t)seq)
            break;
        unsigned fam = m[16], st = m[17];
        if ((long)fam != fam_a && (long)fam != fam_b)
            break;
        unsigned kind = plain[st];
        if (!kind || (long)st == listen)
            break;
        uint16_t sport = load16(m + 20), dport = load16(m + 22);
        const unsigned char *src = m + 24, *dst = m + 40;
        if (dport || memcmp(dst, zero16, 16) != 0) {
            if ((long)st == close_wait || interest[sport] || (sport == dport && memcmp(src, dst, 16) == 0))
                break;
            if (kind == 1 && !wildcard[sport] && !wildcard[dport]) {
                int listener = 0;
                if (specific_port[sport]) {
                    listener = is_specific(specific, asked, src, sport);
                    if (listener < 0)
                        goto done;
                }
                if (!listener && specific_port[dport]) {
                    listener = is_specific(specific, asked, dst, dport);
                    if (listener < 0)
                        goto done;
                }
                if (!listener)
                    break; /* connected with no listener at either end: a socket to build */
            }
            if (usable[sport]) {
                unsigned char key[KEY_LEN];
                key[0] = (unsigned char)fam;
                memcpy(key + 1, &dport, 2);
                memcpy(key + 3, src, 16);
                memcpy(key + 19, dst, 16);
                uint32_t h = 2166136261u;
                for (int i = 0; i < KEY_LEN; i++)
                    h = (h ^ key[i]) * 16777619u;
                unsigned i = h & (SLOTS - 1);
                while (slots[i].used && memcmp(slots[i].key, key, KEY_LEN) != 0)
                    i = (i + 1) & (SLOTS - 1);
                if (!slots[i].used) {
                    if (used == SLOTS / 2) { /* half full: hand the counts to the dict, start again */
                        if (flush_usage(slots, usage) < 0)
                            goto done;
                        used = 0;
                        i = h & (SLOTS - 1);
                    }
                    memcpy(slots[i].key, key, KEY_LEN);
                    slots[i].used = 1;
                    slots[i].count = 0;
                    used++;
                }
                slots[i].count++;
            }
        }
        counts[st]++;
        off += (nlen + 3) & ~(Py_ssize_t)3;
    }
    if (flush_states(counts, states) < 0 || flush_usage(slots, usage) < 0)
        goto done;
    result = PyLong_FromSsize_t(off);
done:
    for (int i = 0; i < held; i++)
        PyBuffer_Release(&views[i]);
    return result;
}

static PyMethodDef methods[] = {
    {"count", (PyCFunction)(void (*)(void))count, METH_FASTCALL, count_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "portwatch.collect._classify",
    "The plain-socket loop of portwatch.collect.netlink.count_messages, in C (optional).", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__classify(void) { return PyModule_Create(&module_def); }
