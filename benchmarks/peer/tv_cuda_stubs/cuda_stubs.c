/*
 * Stand-ins for the three CUDA libraries that torchvision 0.28.0's PyPI wheel links
 * against (libcudart.so.13, libc10_cuda.so, libtorch_cuda.so), so that its compiled
 * extension torchvision/_C.so can be loaded next to the CPU-only torch 2.13.0 wheel.
 *
 * Only the symbols _C.so actually imports from those libraries are defined (list taken
 * with `nm -D --undefined-only _C.so` minus everything CPU torch, libstdc++ and glibc
 * export).  Nothing here runs on a CPU code path:
 *   - the nvcc fat-binary registration hooks (__cudaRegister*, __cudaUnregisterFatBinary,
 *     __cudaInitModule) run from _C.so's static constructors/destructors and are no-ops;
 *   - every other entry point is reachable only from torchvision's CUDA kernels, which the
 *     dispatcher selects for CUDA tensors only; if one is ever called, the process aborts
 *     with a message instead of returning garbage.
 * The CPU kernels (torchvision::nms, roi_align, ...) are torchvision's own compiled code.
 *
 * Built three times by setup_peer.sh, once per SONAME (-DSTUB_CUDART / -DSTUB_C10_CUDA /
 * -DSTUB_TORCH_CUDA), and preloaded with RTLD_GLOBAL by _peer_tv_stubs.py.
 */
#include <stdio.h>
#include <stdlib.h>

static void die(const char *name) {
    fprintf(stderr, "peer torchvision CUDA stub: %s called; CUDA is not available in this "
                    "CPU-only environment\n", name);
    abort();
}

#define DIE(sym) long sym(void) { die(#sym); return 0; }

#ifdef STUB_CUDART
/* fat-binary registration: called at load/unload time, must succeed silently */
void **__cudaRegisterFatBinary(void *fatCubin) { (void)fatCubin; return NULL; }
void __cudaRegisterFatBinaryEnd(void **h) { (void)h; }
void __cudaUnregisterFatBinary(void **h) { (void)h; }
void __cudaRegisterFunction(void) {}
void __cudaRegisterVar(void) {}
char __cudaInitModule(void **h) { (void)h; return 0; }
/* runtime API: only reachable from CUDA kernels */
DIE(__cudaGetKernel)
DIE(__cudaLaunchKernel)
DIE(__cudaPopCallConfiguration)
DIE(__cudaPushCallConfiguration)
DIE(cudaDeviceSynchronize)
DIE(cudaEventCreateWithFlags)
DIE(cudaEventDestroy)
DIE(cudaEventElapsedTime)
DIE(cudaEventQuery)
DIE(cudaEventRecord)
DIE(cudaEventSynchronize)
DIE(cudaGetErrorString)
DIE(cudaGetLastError)
DIE(cudaStreamIsCapturing)
DIE(cudaStreamWaitEvent)
#endif

#ifdef STUB_C10_CUDA
/* c10::cuda::CUDACachingAllocator::allocator (std::atomic<CUDAAllocator*>), null */
void *_ZN3c104cuda20CUDACachingAllocator9allocatorE = NULL;
DIE(_ZN3c104cuda12device_countEv)
DIE(_ZN3c104cuda14ExchangeDeviceEa)
DIE(_ZN3c104cuda14MaybeSetDeviceEa)
DIE(_ZN3c104cuda17getStreamFromPoolEba)
DIE(_ZN3c104cuda17getStreamFromPoolEia)
DIE(_ZN3c104cuda20getCurrentCUDAStreamEa)
DIE(_ZN3c104cuda20getDefaultCUDAStreamEa)
DIE(_ZN3c104cuda20setCurrentCUDAStreamENS0_10CUDAStreamE)
DIE(_ZN3c104cuda29c10_cuda_check_implementationEiPKcS2_jb)
DIE(_ZN3c104cuda9GetDeviceEPa)
DIE(_ZN3c104cuda9SetDeviceEab)
DIE(_ZNK3c104cuda10CUDAStream11synchronizeEv)
DIE(_ZNK3c104cuda10CUDAStream5queryEv)
DIE(_ZNK3c104cuda10CUDAStream6streamEv)
#endif

#ifdef STUB_TORCH_CUDA
DIE(_ZN2at4cuda26getCurrentDevicePropertiesEv)
#endif
