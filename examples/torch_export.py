"""PyTorch interop: export a trained sparse MLP as a torch.nn.Module with torch.sparse
weights, check it predicts the same, fine-tune it one step in PyTorch, import it back.
Uses scikit-learn's bundled digits, so it needs no data folder.

    python examples/torch_export.py
"""

import numpy as np
import torch
from sklearn.datasets import load_digits

from sparsetrain.estimators import SETMLPClassifier
from sparsetrain.interop import from_torch, to_torch

X, y = load_digits(return_X_y=True)
clf = SETMLPClassifier((128, 128), epsilon=5.0, max_iter=10, random_state=0).fit(X, y)
print(f"sparsetrain: training accuracy {clf.score(X, y):.3f}")

module = to_torch(clf.model_)  # eval mode; forward takes raw features, as our model
print(module)
with torch.no_grad():
    logits = module(torch.as_tensor(X, dtype=torch.float32)).numpy()
ours = clf.model_.decision_function(X)
print(f"max |torch - ours| = {np.abs(logits - ours).max():.2e}; "
      f"same predictions: {np.array_equal(logits.argmax(1), ours.argmax(1))}")

# One SGD step in PyTorch: gradients are sparse, only at existing connections.
module.train()
opt = torch.optim.SGD(module.parameters(), lr=0.01)
loss = torch.nn.functional.cross_entropy(module(torch.as_tensor(X[:64], dtype=torch.float32)),
                                         torch.as_tensor(y[:64]))
loss.backward()
opt.step()
print(f"torch step: loss {loss.item():.4f}, weight grad layout {module.weights[0].grad.layout}")

back = from_torch(module.eval())  # a SparseMLP again (same topology), e.g. for more SET epochs
print(f"imported back: {back}")
