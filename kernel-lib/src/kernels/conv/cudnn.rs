//! The CUDA arm of the convolution: forward, input gradient and weight gradient as three cuDNN
//! calls, each with the algorithm cuDNN's own search measured fastest for its shape.
//!
//! candle 0.11 runs a convolution's forward on cuDNN with the heuristic algorithm and a
//! workspace allocated per call, its input gradient as a naive transposed convolution and its
//! weight gradient as a cuDNN convolution over transposed copies of the input and output
//! gradient (docs/kernels.md). Here each pass is the cuDNN call made for it, as in PyTorch with
//! `cudnn.benchmark = True`:
//!
//! * the algorithm is measured once per [`ConvKey`] (shape, pass, dtype, layout, TF32) with
//!   `cudnnFind…AlgorithmEx` on the real buffers and kept for the process;
//! * the math mode is PyTorch's (TF32 allowed for f32 unless `cuda.tf32 = false`), and the
//!   mode the search measured is the one launched;
//! * one workspace per device is grown to the largest the chosen algorithms need and reused by
//!   every call (all calls run on the device's one stream, so reuse is ordered).

use super::plan::{
    conv_tf32, cudnn_dtype, descriptors, fastest, output_dims, search_workspace, ConvDType,
    ConvKey, MathMode, Measured, Pass,
};
use super::CResult;
use super::ConvGeom;
use candle_core::backend::BackendStorage;
use candle_core::cuda::cudarc::cudnn::{result, sys};
use candle_core::cuda::cudarc::driver::{
    self, CudaSlice, CudaStream, DevicePtr, DevicePtrMut, DeviceRepr,
};
use candle_core::cuda::{CudaDType, DeviceId};
use candle_core::{CudaDevice, CudaStorage, Layout, Shape};
use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::{Arc, LazyLock, Mutex};

type FwdAlgo = sys::cudnnConvolutionFwdAlgo_t;
type DataAlgo = sys::cudnnConvolutionBwdDataAlgo_t;
type FilterAlgo = sys::cudnnConvolutionBwdFilterAlgo_t;

/// An algorithm of one of the three passes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Algo {
    Fwd(FwdAlgo),
    Data(DataAlgo),
    Filter(FilterAlgo),
}

/// Every algorithm cuDNN has for `pass`: the search is offered a workspace that fits the
/// hungriest of them (within bounds, see [`search_workspace`]).
fn all_algos(pass: Pass) -> Vec<Algo> {
    use sys::cudnnConvolutionBwdDataAlgo_t as D;
    use sys::cudnnConvolutionBwdFilterAlgo_t as F;
    use sys::cudnnConvolutionFwdAlgo_t as A;
    match pass {
        Pass::Forward => [
            A::CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM,
            A::CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_PRECOMP_GEMM,
            A::CUDNN_CONVOLUTION_FWD_ALGO_GEMM,
            A::CUDNN_CONVOLUTION_FWD_ALGO_DIRECT,
            A::CUDNN_CONVOLUTION_FWD_ALGO_FFT,
            A::CUDNN_CONVOLUTION_FWD_ALGO_FFT_TILING,
            A::CUDNN_CONVOLUTION_FWD_ALGO_WINOGRAD,
            A::CUDNN_CONVOLUTION_FWD_ALGO_WINOGRAD_NONFUSED,
        ]
        .map(Algo::Fwd)
        .to_vec(),
        Pass::InputGrad => [
            D::CUDNN_CONVOLUTION_BWD_DATA_ALGO_0,
            D::CUDNN_CONVOLUTION_BWD_DATA_ALGO_1,
            D::CUDNN_CONVOLUTION_BWD_DATA_ALGO_FFT,
            D::CUDNN_CONVOLUTION_BWD_DATA_ALGO_FFT_TILING,
            D::CUDNN_CONVOLUTION_BWD_DATA_ALGO_WINOGRAD,
            D::CUDNN_CONVOLUTION_BWD_DATA_ALGO_WINOGRAD_NONFUSED,
        ]
        .map(Algo::Data)
        .to_vec(),
        Pass::WeightGrad => [
            F::CUDNN_CONVOLUTION_BWD_FILTER_ALGO_0,
            F::CUDNN_CONVOLUTION_BWD_FILTER_ALGO_1,
            F::CUDNN_CONVOLUTION_BWD_FILTER_ALGO_FFT,
            F::CUDNN_CONVOLUTION_BWD_FILTER_ALGO_3,
            F::CUDNN_CONVOLUTION_BWD_FILTER_ALGO_WINOGRAD_NONFUSED,
            F::CUDNN_CONVOLUTION_BWD_FILTER_ALGO_FFT_TILING,
        ]
        .map(Algo::Filter)
        .to_vec(),
    }
}

fn sys_math(m: MathMode) -> sys::cudnnMathType_t {
    match m {
        MathMode::Default => sys::cudnnMathType_t::CUDNN_DEFAULT_MATH,
        MathMode::TensorOp => sys::cudnnMathType_t::CUDNN_TENSOR_OP_MATH,
        MathMode::TensorOpConversion => sys::cudnnMathType_t::CUDNN_TENSOR_OP_MATH_ALLOW_CONVERSION,
        MathMode::Fma => sys::cudnnMathType_t::CUDNN_FMA_MATH,
    }
}

fn from_sys_math(m: sys::cudnnMathType_t) -> MathMode {
    match m {
        sys::cudnnMathType_t::CUDNN_DEFAULT_MATH => MathMode::Default,
        sys::cudnnMathType_t::CUDNN_TENSOR_OP_MATH => MathMode::TensorOp,
        sys::cudnnMathType_t::CUDNN_TENSOR_OP_MATH_ALLOW_CONVERSION => MathMode::TensorOpConversion,
        sys::cudnnMathType_t::CUDNN_FMA_MATH => MathMode::Fma,
    }
}

fn sys_dtype(d: ConvDType) -> sys::cudnnDataType_t {
    match d {
        ConvDType::F32 => sys::cudnnDataType_t::CUDNN_DATA_FLOAT,
        ConvDType::F16 => sys::cudnnDataType_t::CUDNN_DATA_HALF,
        ConvDType::BF16 => sys::cudnnDataType_t::CUDNN_DATA_BFLOAT16,
    }
}

/// A cuDNN handle bound to one candle device's stream, and that device's workspace.
struct Handle {
    raw: sys::cudnnHandle_t,
    stream: Arc<CudaStream>,
    workspace: Option<CudaSlice<u8>>,
}

impl Handle {
    fn new(dev: &CudaDevice) -> CResult<Self> {
        let stream = dev.cuda_stream();
        stream.context().bind_to_thread()?;
        let raw = result::create_handle()?;
        let handle = Handle {
            raw,
            stream: stream.clone(),
            workspace: None,
        };
        unsafe { result::set_stream(raw, stream.cu_stream() as sys::cudaStream_t) }?;
        Ok(handle)
    }

    /// The pooled workspace, grown to at least `bytes` (`None` for none).
    fn workspace(&mut self, bytes: usize) -> CResult<Option<&mut CudaSlice<u8>>> {
        if bytes == 0 {
            return Ok(None);
        }
        if self.workspace.as_ref().is_none_or(|w| w.len() < bytes) {
            // The old buffer is freed in stream order, after the calls that use it.
            self.workspace = None;
            self.workspace = Some(unsafe { self.stream.alloc::<u8>(bytes) }?);
        }
        Ok(self.workspace.as_mut())
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        // Nothing to report to at thread exit; a failed destroy leaks one handle.
        let _ = unsafe { result::destroy_handle(self.raw) };
    }
}

thread_local! {
    // cuDNN handles may not be shared between threads at once; candle keeps its own the same way.
    static HANDLES: RefCell<HashMap<DeviceId, Handle>> = RefCell::new(HashMap::new());
}

/// The algorithm chosen for each key, for the life of the process.
static CHOSEN: LazyLock<Mutex<HashMap<ConvKey, Measured<Algo>>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

/// How many algorithm choices this process has measured and cached (each key is searched once).
pub(super) fn searches() -> usize {
    CHOSEN.lock().map(|c| c.len()).unwrap_or(0)
}

macro_rules! descriptor {
    ($name:ident, $raw:ty, $destroy:path) => {
        struct $name($raw);
        impl Drop for $name {
            fn drop(&mut self) {
                let _ = unsafe { $destroy(self.0) };
            }
        }
    };
}
descriptor!(
    TensorDesc,
    sys::cudnnTensorDescriptor_t,
    result::destroy_tensor_descriptor
);
descriptor!(
    FilterDesc,
    sys::cudnnFilterDescriptor_t,
    result::destroy_filter_descriptor
);
descriptor!(
    ConvDesc,
    sys::cudnnConvolutionDescriptor_t,
    result::destroy_convolution_descriptor
);

/// The descriptors of one convolution: input, filter, output, and the convolution itself.
struct Call {
    handle: sys::cudnnHandle_t,
    x: TensorDesc,
    w: FilterDesc,
    y: TensorDesc,
    conv: ConvDesc,
}

impl Call {
    fn new(
        handle: sys::cudnnHandle_t,
        g: &ConvGeom,
        dtype: ConvDType,
        math: MathMode,
    ) -> CResult<Self> {
        let d = descriptors(g)?;
        // The dims are NCHW-ordered either way; the format says how memory holds them (NHWC:
        // channels innermost, the filter as OHWI).
        let format = match g.format {
            super::plan::Format::Nchw => sys::cudnnTensorFormat_t::CUDNN_TENSOR_NCHW,
            super::plan::Format::Nhwc => sys::cudnnTensorFormat_t::CUDNN_TENSOR_NHWC,
        };
        let data = sys_dtype(dtype);
        let tensor = |dims| -> CResult<TensorDesc> {
            let t = TensorDesc(result::create_tensor_descriptor()?);
            unsafe { result::set_tensor4d_descriptor(t.0, format, data, dims) }?;
            Ok(t)
        };
        let (x, y) = (tensor(d.x)?, tensor(d.y)?);
        let w = FilterDesc(result::create_filter_descriptor()?);
        unsafe { result::set_filter4d_descriptor(w.0, data, format, d.w) }?;
        let conv = ConvDesc(result::create_convolution_descriptor()?);
        unsafe {
            result::set_convolution2d_descriptor(
                conv.0,
                d.pad[0],
                d.pad[1],
                d.stride[0],
                d.stride[1],
                1,
                1,
                sys::cudnnConvolutionMode_t::CUDNN_CROSS_CORRELATION,
                // Half and bfloat16 data accumulate in f32, as in PyTorch.
                sys::cudnnDataType_t::CUDNN_DATA_FLOAT,
            )?;
            result::set_convolution_math_type(conv.0, sys_math(math))?;
        }
        Ok(Call {
            handle,
            x,
            w,
            y,
            conv,
        })
    }

    fn set_math(&self, m: MathMode) -> CResult<()> {
        Ok(unsafe { result::set_convolution_math_type(self.conv.0, sys_math(m)) }?)
    }

    /// Workspace bytes `algo` needs, or `None` if it does not apply to this shape.
    fn workspace_size(&self, algo: Algo) -> Option<usize> {
        let (h, x, w, y, c) = (self.handle, self.x.0, self.w.0, self.y.0, self.conv.0);
        unsafe {
            match algo {
                Algo::Fwd(a) => result::get_convolution_forward_workspace_size(h, x, w, c, y, a),
                Algo::Data(a) => {
                    result::get_convolution_backward_data_workspace_size(h, w, y, c, x, a)
                }
                Algo::Filter(a) => {
                    result::get_convolution_backward_filter_workspace_size(h, x, y, c, w, a)
                }
            }
        }
        .ok()
    }

    /// cuDNN's search: every algorithm run on the real buffers and timed (`out` is
    /// overwritten). The pointers are those of [`Call::launch`].
    ///
    /// # Safety
    /// The pointers must be device buffers of the descriptors' sizes, `ws` one of `ws_len` bytes.
    unsafe fn find(
        &self,
        pass: Pass,
        p: Ptrs,
        ws: *mut c_void,
        ws_len: usize,
    ) -> CResult<Vec<Measured<Algo>>> {
        const MAX: usize = 16;
        let mut n = 0i32;
        let (h, x, w, y, c) = (self.handle, self.x.0, self.w.0, self.y.0, self.conv.0);
        macro_rules! measured {
            ($perf:expr, $wrap:expr) => {
                $perf[..n.max(0) as usize]
                    .iter()
                    .map(|r| Measured {
                        algo: $wrap(r.algo),
                        ok: r.status == sys::cudnnStatus_t::CUDNN_STATUS_SUCCESS,
                        millis: r.time,
                        memory: r.memory,
                        math: from_sys_math(r.mathType),
                    })
                    .collect()
            };
        }
        Ok(match pass {
            Pass::Forward => {
                let mut perf = [std::mem::zeroed::<sys::cudnnConvolutionFwdAlgoPerf_t>(); MAX];
                sys::cudnnFindConvolutionForwardAlgorithmEx(
                    h,
                    x,
                    p.a,
                    w,
                    p.b,
                    c,
                    y,
                    p.out,
                    MAX as i32,
                    &mut n,
                    perf.as_mut_ptr(),
                    ws,
                    ws_len,
                )
                .result()?;
                measured!(perf, Algo::Fwd)
            }
            Pass::InputGrad => {
                let mut perf = [std::mem::zeroed::<sys::cudnnConvolutionBwdDataAlgoPerf_t>(); MAX];
                sys::cudnnFindConvolutionBackwardDataAlgorithmEx(
                    h,
                    w,
                    p.b,
                    y,
                    p.a,
                    c,
                    x,
                    p.out,
                    MAX as i32,
                    &mut n,
                    perf.as_mut_ptr(),
                    ws,
                    ws_len,
                )
                .result()?;
                measured!(perf, Algo::Data)
            }
            Pass::WeightGrad => {
                let mut perf =
                    [std::mem::zeroed::<sys::cudnnConvolutionBwdFilterAlgoPerf_t>(); MAX];
                sys::cudnnFindConvolutionBackwardFilterAlgorithmEx(
                    h,
                    x,
                    p.a,
                    y,
                    p.b,
                    c,
                    w,
                    p.out,
                    MAX as i32,
                    &mut n,
                    perf.as_mut_ptr(),
                    ws,
                    ws_len,
                )
                .result()?;
                measured!(perf, Algo::Filter)
            }
        })
    }

    /// Runs `algo`: forward `y = conv(x = a, w = b)`, input gradient `dx = out` from
    /// `dy = a, w = b`, or weight gradient `dw = out` from `x = a, dy = b`.
    ///
    /// # Safety
    /// As for [`Call::find`].
    unsafe fn launch(&self, algo: Algo, p: Ptrs, ws: *mut c_void, ws_len: usize) -> CResult<()> {
        let (one, zero) = (1f32, 0f32);
        let alpha = &one as *const f32 as *const c_void;
        let beta = &zero as *const f32 as *const c_void;
        let (h, x, w, y, c) = (self.handle, self.x.0, self.w.0, self.y.0, self.conv.0);
        match algo {
            Algo::Fwd(a) => result::convolution_forward(
                h, alpha, x, p.a, w, p.b, c, a, ws, ws_len, beta, y, p.out,
            ),
            Algo::Data(a) => result::convolution_backward_data(
                h, alpha, w, p.b, y, p.a, c, a, ws, ws_len, beta, x, p.out,
            ),
            Algo::Filter(a) => result::convolution_backward_filter(
                h, alpha, x, p.a, y, p.b, c, a, ws, ws_len, beta, w, p.out,
            ),
        }?;
        Ok(())
    }
}

/// The device pointers of one call: the two operands and the output.
#[derive(Clone, Copy)]
struct Ptrs {
    a: *const c_void,
    b: *const c_void,
    out: *mut c_void,
}

/// The algorithm for `key`: the cached choice, or cuDNN's search on these buffers.
///
/// # Safety
/// As for [`Call::find`].
unsafe fn choose(
    handle: &mut Handle,
    key: ConvKey,
    call: &Call,
    p: Ptrs,
) -> CResult<Measured<Algo>> {
    if let Some(m) = CHOSEN.lock().ok().and_then(|c| c.get(&key).copied()) {
        return Ok(m);
    }
    let asked: Vec<usize> = all_algos(key.pass)
        .into_iter()
        .filter_map(|a| call.workspace_size(a))
        .collect();
    let (free, _) = driver::result::mem_get_info()?;
    let mut limit = search_workspace(&asked, free);
    let scratch = match limit {
        0 => None,
        n => match handle.stream.alloc::<u8>(n) {
            Ok(s) => Some(s),
            Err(_) => {
                limit = 0;
                None
            }
        },
    };
    let found = {
        let ws = match &scratch {
            Some(s) => s.device_ptr(&handle.stream).0 as *mut c_void,
            None => std::ptr::null_mut(),
        };
        call.find(key.pass, p, ws, limit)?
    };
    drop(scratch);
    let chosen = fastest(&found, limit).ok_or_else(|| {
        candle_core::Error::Msg(format!(
            "cuDNN found no algorithm for the {:?} pass of conv2d {:?} ({:?})",
            key.pass, key.dims, key.dtype
        ))
    })?;
    if let Ok(mut c) = CHOSEN.lock() {
        c.insert(key, chosen);
    }
    Ok(chosen)
}

/// One pass of a convolution of geometry `g` on CUDA: forward from (x, w), input gradient from
/// (dy, w), weight gradient from (x, dy). Both operands contiguous, of one dtype.
pub(super) fn conv_pass(
    pass: Pass,
    g: &ConvGeom,
    (a, la): (&CudaStorage, &Layout),
    (b, lb): (&CudaStorage, &Layout),
) -> CResult<(CudaStorage, Shape)> {
    if a.dtype() != b.dtype() {
        candle_core::bail!("conv2d: operands of {:?} and {:?}", a.dtype(), b.dtype());
    }
    if !la.is_contiguous() || !lb.is_contiguous() {
        candle_core::bail!("conv2d on CUDA: expected contiguous operands");
    }
    let Some(dtype) = cudnn_dtype(a.dtype()) else {
        candle_core::bail!(
            "conv2d on CUDA through cuDNN: {:?} is not f32, f16 or bf16",
            a.dtype()
        );
    };
    match dtype {
        ConvDType::F32 => typed::<f32>(pass, g, dtype, (a, la), (b, lb)),
        ConvDType::F16 => typed::<half::f16>(pass, g, dtype, (a, la), (b, lb)),
        ConvDType::BF16 => typed::<half::bf16>(pass, g, dtype, (a, la), (b, lb)),
    }
}

fn typed<T: CudaDType + DeviceRepr>(
    pass: Pass,
    g: &ConvGeom,
    dtype: ConvDType,
    (a, la): (&CudaStorage, &Layout),
    (b, lb): (&CudaStorage, &Layout),
) -> CResult<(CudaStorage, Shape)> {
    let dev = a.device.clone();
    let stream = dev.cuda_stream();
    let av = a.as_cuda_slice::<T>()?.slice(la.start_offset()..);
    let bv = b.as_cuda_slice::<T>()?.slice(lb.start_offset()..);
    let dims = output_dims(pass, g);
    let mut out = unsafe { dev.alloc::<T>(dims.iter().product())? };
    let tf32 = conv_tf32();
    let key = ConvKey::new(stream.context().ordinal(), pass, g, dtype, tf32);
    HANDLES.with(|handles| -> CResult<()> {
        let mut handles = handles.borrow_mut();
        let handle = match handles.entry(dev.id()) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => e.insert(Handle::new(&dev)?),
        };
        let call = Call::new(handle.raw, g, dtype, super::plan::math_mode(dtype, tf32))?;
        let (pa, _ra) = av.device_ptr(&stream);
        let (pb, _rb) = bv.device_ptr(&stream);
        let (po, _ro) = out.device_ptr_mut(&stream);
        let p = Ptrs {
            a: pa as *const c_void,
            b: pb as *const c_void,
            out: po as *mut c_void,
        };
        unsafe {
            let chosen = choose(handle, key, &call, p)?;
            call.set_math(chosen.math)?;
            let ws = handle.workspace(chosen.memory)?;
            let ws_len = ws.as_ref().map_or(0, |w| w.len());
            let wp = match ws {
                Some(w) => w.device_ptr_mut(&stream).0 as *mut c_void,
                None => std::ptr::null_mut(),
            };
            call.launch(chosen.algo, p, wp, ws_len)
        }
    })?;
    Ok((
        CudaStorage::wrap_cuda_slice(out, dev),
        Shape::from(dims.to_vec()),
    ))
}
