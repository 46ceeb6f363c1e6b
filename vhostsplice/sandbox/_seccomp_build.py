"""cffi builder for vhostsplice.sandbox._seccomp_abi: out-of-line ABI mode (setup.py's cffi_modules).

Nothing is compiled and no header is needed: `pip install` turns these declarations into a Python module
once, so a worker opens libseccomp.so.2 at run time without parsing C (ABI mode in-line would run
pycparser in every worker, about 0.1 s). The declarations are libseccomp's public API (seccomp.h).
"""
from cffi import FFI

CDEF = """
typedef void *scmp_filter_ctx;
struct scmp_version { unsigned int major; unsigned int minor; unsigned int micro; };
struct scmp_arg_cmp { unsigned int arg; int op; uint64_t datum_a; uint64_t datum_b; };
const struct scmp_version *seccomp_version(void);
scmp_filter_ctx seccomp_init(uint32_t def_action);
void seccomp_release(scmp_filter_ctx ctx);
int seccomp_attr_set(scmp_filter_ctx ctx, int attr, uint32_t value);
int seccomp_syscall_resolve_name(const char *name);
char *seccomp_syscall_resolve_num_arch(uint32_t arch_token, int num);
void free(void *ptr);
int seccomp_rule_add_array(scmp_filter_ctx ctx, uint32_t action, int syscall, unsigned int arg_cnt,
                           const struct scmp_arg_cmp *arg_array);
int seccomp_load(const scmp_filter_ctx ctx);
"""

ffibuilder = FFI()
ffibuilder.cdef(CDEF)
ffibuilder.set_source("vhostsplice.sandbox._seccomp_abi", None)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
