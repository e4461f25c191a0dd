/*
 * Catching the RPC runtime's exceptions without __try (gcc has none).
 *
 * sb_rpc__guarded(fn, arg) calls fn(arg) in a frame that has a structured
 * exception handler, declared in the function's unwind data (.seh_handler),
 * exactly where an MSVC __except would put one. When the stub or the runtime
 * raises an RPC status (RpcRaiseException: a code below 0x10000, or one the
 * server sent as its fault), the handler unwinds to that frame with
 * RtlUnwindEx, as __except does: the runtime's own cleanup handlers on the
 * way run (its buffers and its connection are released), and sb_rpc__guarded
 * returns the exception code. Hardware faults (access violations, ...) are
 * left alone: they are bugs, not answers.
 *
 * x86-64 only (the Windows builds are).
 */
#include <windows.h>

long sb_rpc__guarded(long (*fn)(void *), void *arg);

EXCEPTION_DISPOSITION sb_rpc__guard_handler(EXCEPTION_RECORD *rec, void *frame, CONTEXT *ctx,
                                            DISPATCHER_CONTEXT *dc);

extern char sb_rpc__guard_resume[];

/* The frame: 40 bytes of stack (the callee's 32-byte home area, aligned),
 * the call, and the point the handler resumes at with RAX = the code. */
__asm__("    .text\n"
        "    .globl sb_rpc__guarded\n"
        "    .def sb_rpc__guarded; .scl 2; .type 32; .endef\n"
        "    .seh_proc sb_rpc__guarded\n"
        "sb_rpc__guarded:\n"
        "    subq $40, %rsp\n"
        "    .seh_stackalloc 40\n"
        "    .seh_endprologue\n"
        "    .seh_handler sb_rpc__guard_handler, @except\n"
        "    movq %rcx, %rax\n"
        "    movq %rdx, %rcx\n"
        "    callq *%rax\n"
        "    .globl sb_rpc__guard_resume\n"
        "sb_rpc__guard_resume:\n"
        "    nop\n"
        "    addq $40, %rsp\n"
        "    ret\n"
        "    .seh_endproc\n");

static int is_fault(DWORD code)
{
    switch (code) {
    case EXCEPTION_ACCESS_VIOLATION:
    case EXCEPTION_ARRAY_BOUNDS_EXCEEDED:
    case EXCEPTION_BREAKPOINT:
    case EXCEPTION_DATATYPE_MISALIGNMENT:
    case EXCEPTION_FLT_DENORMAL_OPERAND:
    case EXCEPTION_FLT_DIVIDE_BY_ZERO:
    case EXCEPTION_FLT_INEXACT_RESULT:
    case EXCEPTION_FLT_INVALID_OPERATION:
    case EXCEPTION_FLT_OVERFLOW:
    case EXCEPTION_FLT_STACK_CHECK:
    case EXCEPTION_FLT_UNDERFLOW:
    case EXCEPTION_ILLEGAL_INSTRUCTION:
    case EXCEPTION_IN_PAGE_ERROR:
    case EXCEPTION_INT_DIVIDE_BY_ZERO:
    case EXCEPTION_INT_OVERFLOW:
    case EXCEPTION_INVALID_DISPOSITION:
    case EXCEPTION_NONCONTINUABLE_EXCEPTION:
    case EXCEPTION_PRIV_INSTRUCTION:
    case EXCEPTION_SINGLE_STEP:
    case EXCEPTION_STACK_OVERFLOW:
    case STATUS_HEAP_CORRUPTION:
        return 1;
    default:
        return 0;
    }
}

EXCEPTION_DISPOSITION sb_rpc__guard_handler(EXCEPTION_RECORD *rec, void *frame, CONTEXT *ctx,
                                            DISPATCHER_CONTEXT *dc)
{
    if (rec->ExceptionFlags & (EXCEPTION_UNWINDING | EXCEPTION_EXIT_UNWIND))
        return ExceptionContinueSearch;
    if (is_fault(rec->ExceptionCode))
        return ExceptionContinueSearch;
    RtlUnwindEx(frame, sb_rpc__guard_resume, rec, (void *)(ULONG_PTR)rec->ExceptionCode, ctx,
                dc->HistoryTable);
    return ExceptionContinueSearch; /* not reached */
}
