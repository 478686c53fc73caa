"""Gradients of a summed loss with respect to a model's first input, on every Keras backend.

The only backend-specific code of the core (Taylor importance needs the
gradient at the block's maps: :meth:`TailEngine.input_gradient
<keras_hybrid_interp.core.engine.TailEngine.input_gradient>`):
:func:`make_input_gradient` switches between ``tf.GradientTape``,
``jax.value_and_grad`` and ``torch.autograd``.
"""

from __future__ import annotations

import numpy as np

import keras

__all__ = ["make_input_gradient"]


def make_input_gradient(model, loss_fn):
    """Backend switch for the gradient of a summed loss w.r.t. the first input.

    Returns ``f(arrays, labels) -> (gradient, output)`` as NumPy arrays,
    computed with the model's weights as they are at each call of ``f``
    (also after ``variable.assign``):

    * ``tensorflow``: ``tf.GradientTape`` inside one ``tf.function`` (traced
      once per input shape), which reads the variables by reference
      (:func:`tensorflow_input_gradient`);
    * ``jax``: ``jax.value_and_grad`` of ``model.stateless_call`` under
      ``jax.jit``, with the current variable values passed in as arguments
      at every call (a jitted closure over the model would bake the values
      of its first trace in as constants) (:func:`jax_input_gradient`);
    * ``torch``: ``torch.autograd.grad``, eager (:func:`torch_input_gradient`).
    """
    backend = keras.backend.backend()
    if backend == "tensorflow":
        return tensorflow_input_gradient(model, loss_fn)
    if backend == "jax":
        return jax_input_gradient(model, loss_fn)
    if backend == "torch":
        return torch_input_gradient(model, loss_fn)
    raise ValueError(
        f"Taylor importance needs gradients; the Keras backend {backend!r} is not supported "
        "(supported: 'tensorflow', 'jax', 'torch')."
    )


def _forward(model, xs):
    """The model's output in inference mode on the list of inputs ``xs``."""
    return model(xs if len(xs) > 1 else xs[0], training=False)


def tensorflow_input_gradient(model, loss_fn):
    """:func:`make_input_gradient` on TensorFlow: a ``tf.GradientTape`` inside one ``tf.function``."""
    import tensorflow as tf  # the core needs TF only here: gradients

    @tf.function(reduce_retracing=True)
    def step(xs, labels):
        with tf.GradientTape() as tape:
            tape.watch(xs[0])
            out = _forward(model, xs)
            loss = tf.reduce_sum(loss_fn(out, labels))
        return tape.gradient(loss, xs[0]), out

    def f(arrays, labels):
        xs = [tf.convert_to_tensor(a) for a in arrays]
        lab = None if labels is None else tf.convert_to_tensor(labels)
        g, out = step(xs, lab)
        return np.asarray(g), np.asarray(out)

    return f


def jax_input_gradient(model, loss_fn):
    """:func:`make_input_gradient` on JAX: ``jax.value_and_grad`` of ``model.stateless_call`` under ``jax.jit``."""
    import jax
    import jax.numpy as jnp

    def loss_of(a0, rest, labels, trainable, non_trainable):
        xs = [a0] + list(rest)
        out, _ = model.stateless_call(trainable, non_trainable, xs if len(xs) > 1 else xs[0], training=False)
        return jnp.sum(loss_fn(out, labels)), out

    # Differentiates w.r.t. the first argument only.
    step = jax.jit(jax.value_and_grad(loss_of, has_aux=True))

    def f(arrays, labels):
        trainable = [v.value for v in model.trainable_variables]
        non_trainable = [v.value for v in model.non_trainable_variables]
        (_, out), g = step(jnp.asarray(arrays[0]), [jnp.asarray(a) for a in arrays[1:]],
                           None if labels is None else jnp.asarray(labels), trainable, non_trainable)
        return np.asarray(g), np.asarray(out)

    return f


def torch_input_gradient(model, loss_fn):
    """:func:`make_input_gradient` on torch: ``torch.autograd.grad``, eager."""
    import torch

    def f(arrays, labels):
        # Gradients even when the caller is inside ``torch.no_grad()`` or
        # ``torch.inference_mode()``, as torch inference code often is.
        with torch.inference_mode(False), torch.enable_grad():
            xs = [keras.ops.convert_to_tensor(a) for a in arrays]
            xs[0] = xs[0].detach().requires_grad_(True)
            lab = None if labels is None else keras.ops.convert_to_tensor(labels)
            out = _forward(model, xs)
            loss = torch.sum(loss_fn(out, lab))
            (g,) = torch.autograd.grad(loss, xs[0])
        return g.detach().cpu().numpy(), out.detach().cpu().numpy()

    return f
